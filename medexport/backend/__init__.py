"""Backends: one runner interface over PyTorch, ONNX Runtime and TensorRT."""

from .base import BACKENDS, BatchRange, Runner
from .onnxrt import OnnxrtRunner, session_from_onnx
from .torch_runner import TorchRunner

__all__ = ["BACKENDS", "BatchRange", "OnnxrtRunner", "Runner", "TorchRunner", "session_from_onnx"]
