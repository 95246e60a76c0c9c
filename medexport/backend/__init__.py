"""Backends: one runner interface over PyTorch, ONNX Runtime and TensorRT.

Each engine backend lives in its own folder (``onnxrt/``, ``trt/``) as one :class:`EngineBackend` object,
found by name through :mod:`.registry`; ``torch_runner`` runs the PyTorch reference. Names load on first use, so
that :class:`BatchRange` (``batch.py``) comes without torch.
"""

from __future__ import annotations

import importlib

_LAZY = {"BatchRange": "batch", "Runner": "base", "EngineBackend": "registry", "OnnxrtRunner": "onnxrt",
         "session_from_onnx": "onnxrt", "TorchRunner": "torch_runner"}


def __getattr__(name: str):
    if name == "registry":
        return importlib.import_module(".registry", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BatchRange", "EngineBackend", "OnnxrtRunner", "Runner", "TorchRunner", "registry", "session_from_onnx"]
