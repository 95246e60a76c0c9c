"""medexport: mediator DiT/SiT from PyTorch to deployed engines.

The public API (``medexport.Pipeline``, ``medexport.load_checkpoint``, ...) is loaded on first use, so that
``import medexport`` and the command line's help stay fast.
"""

from __future__ import annotations

import importlib

from .errors import MedexportError
from .version import __version__

_LAZY = {
    "Pipeline": "runtime.pipeline",
    "SampleResult": "core.sampling",
    "TraceEntry": "core.sampling",
    "SamplingSettings": "core.settings",
    "SampleRequest": "core.request",
    "MODEL_NAMES": "model",
    "MediatorDiT": "model",
    "ModelConfig": "model",
    "create_model": "model",
    "forward_flops": "model",
    "load_checkpoint": "model",
    "save_checkpoint": "model",
}


def __getattr__(name: str):
    if name in _LAZY:
        try:
            module = importlib.import_module(f".{_LAZY[name]}", __name__)
        except ModuleNotFoundError as e:  # an extra's package (torch: the build extra) is not installed
            from .extras import explain

            error = explain(e, f"medexport.{name}")
            if error is None:
                raise
            raise error from None
        value = getattr(module, name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "MODEL_NAMES",
    "MediatorDiT",
    "MedexportError",
    "ModelConfig",
    "Pipeline",
    "SampleRequest",
    "SampleResult",
    "SamplingSettings",
    "TraceEntry",
    "__version__",
    "create_model",
    "forward_flops",
    "load_checkpoint",
    "save_checkpoint",
]
