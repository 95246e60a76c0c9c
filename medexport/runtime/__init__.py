"""Sampling on torch tensors: :class:`~medexport.runtime.pipeline.Pipeline` over runners of any backend, the
torch array adapter, dopri5, benchmarks, images, sharded generation.

The samplers, schedules and settings themselves are torch-free and live in :mod:`medexport.core` (the torch-free
runtime, :mod:`medexport.lite`, runs the same code on numpy); the names below load on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DEFAULT_METHOD": "..core.settings",
    "DEFAULT_STEPS": "..core.settings",
    "LAST_STEPS": "..core.settings",
    "METHODS": "..core.settings",
    "SAMPLERS": "..core.settings",
    "SamplingSettings": "..core.settings",
    "StepInfo": "..core.steps",
    "NonFiniteError": "..core.samplers",
    "OnStep": "..core.samplers",
    "Velocity": "..core.samplers",
    "sample": ".samplers",
    "AdaptiveSchedule": "..core.schedule",
    "FixedSchedule": "..core.schedule",
    "Schedule": "..core.schedule",
    "Switch": "..core.schedule",
    "parse_schedule": "..core.schedule_text",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
