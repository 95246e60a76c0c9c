"""Sampling: the reference's SDE/ODE samplers and the step-wise mediator schedules.

Names load on first use: the schedules and sampler settings import no torch (the torch-free runtime,
:mod:`medexport.lite`, uses them); the samplers, the pipeline and the rest do.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DEFAULT_METHOD": "settings", "DEFAULT_STEPS": "settings", "LAST_STEPS": "settings", "METHODS": "settings",
    "SAMPLERS": "settings", "SamplerSettings": "settings", "StepInfo": "settings",
    "NonFiniteError": "samplers", "OnStep": "samplers", "Velocity": "samplers", "sample": "samplers",
    "AdaptiveSchedule": "schedule", "FixedSchedule": "schedule", "Schedule": "schedule", "Switch": "schedule",
    "parse_schedule": "schedule",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
