"""Sampling: the reference's SDE/ODE samplers and the step-wise mediator schedules."""

from .samplers import (
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    LAST_STEPS,
    METHODS,
    SAMPLERS,
    NonFiniteError,
    OnStep,
    SamplerSettings,
    StepInfo,
    Velocity,
    sample,
)
from .schedule import AdaptiveSchedule, FixedSchedule, Schedule, Switch, parse_schedule

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_STEPS",
    "LAST_STEPS",
    "METHODS",
    "SAMPLERS",
    "AdaptiveSchedule",
    "FixedSchedule",
    "NonFiniteError",
    "OnStep",
    "SamplerSettings",
    "Schedule",
    "StepInfo",
    "Switch",
    "Velocity",
    "parse_schedule",
    "sample",
]
