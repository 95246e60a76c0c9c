"""Backends: one runner interface over PyTorch, ONNX Runtime and TensorRT.

Each backend lives in its own folder (``onnxrt/``, ``trt/``, ``pytorch/``) as one ``BACKEND`` object, found by
folder through :mod:`.registry`. Names load on first use: the registry and the backends' objects import no torch
and no backend library; runners (:mod:`.base`) do.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Runner": ".base",
    "EngineBackend": ".registry",
    "OnnxrtRunner": ".onnxrt.runner",
    "session_from_onnx": ".onnxrt.session",
    "TorchRunner": ".pytorch.runner",
}


def __getattr__(name: str):
    if name == "registry":
        return importlib.import_module(".registry", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EngineBackend", "OnnxrtRunner", "Runner", "TorchRunner", "registry", "session_from_onnx"]
