"""Backends: one runner interface over PyTorch, ONNX Runtime and TensorRT.

Each engine backend lives in its own folder (``onnxrt/``, ``trt/``) as one :class:`EngineBackend` object,
found by name through :mod:`.registry`; ``torch_runner`` runs the PyTorch reference.
"""

from . import registry
from .base import BatchRange, Runner
from .onnxrt import OnnxrtRunner, session_from_onnx
from .registry import EngineBackend
from .torch_runner import TorchRunner

__all__ = ["BatchRange", "EngineBackend", "OnnxrtRunner", "Runner", "TorchRunner", "registry", "session_from_onnx"]
