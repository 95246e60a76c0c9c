"""A model's recommended sampling settings, recorded in its bundle and used wherever the user gives none.

``sample``, ``eval`` and the Python API take each setting from the user when given, else from the bundle's
record, else from the reference's defaults (SDE, 250 steps, no guidance, the largest mediator count alone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import SamplingError
from .samplers import DEFAULT_METHOD, DEFAULT_STEPS, SamplerSettings
from .schedule import parse_schedule

CFG_CHANNELS = ("3", "all")


@dataclass(frozen=True)
class SamplingDefaults:
    """Recommended sampling settings of a model (every field has the meaning of the CLI option of its name).

    Attributes:
        sampler: "sde" or "ode".
        method: the integrator (None: the sampler's default, euler for sde, dopri5 for ode).
        steps: grid points as the reference counts them (None: 250 for sde, 50 for ode).
        cfg_scale: classifier-free guidance scale (1: none).
        cfg_channels: "3" (the reference: guide the first 3 channels) or "all".
        schedule: the mediator schedule in its text form, or None for the largest count alone.
    """

    sampler: str = "sde"
    method: str | None = None
    steps: int | None = None
    cfg_scale: float = 1.0
    cfg_channels: str = "3"
    schedule: str | None = None

    def __post_init__(self) -> None:
        settings = SamplerSettings(sampler=self.sampler, method=self.method, steps=self.steps)  # validates
        object.__setattr__(self, "sampler", settings.sampler)
        object.__setattr__(self, "method", settings.method)
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) \
                or not math.isfinite(self.cfg_scale) or self.cfg_scale < 1:
            raise SamplingError(f"cfg scale {self.cfg_scale!r} is below 1 or not a number: use 1 (no guidance) or more (e.g. 4.0)")
        object.__setattr__(self, "cfg_scale", float(self.cfg_scale))
        channels = str(self.cfg_channels)
        if channels not in CFG_CHANNELS:
            raise SamplingError(f"cfg channels must be '3' (the reference) or 'all', got {self.cfg_channels!r}")
        object.__setattr__(self, "cfg_channels", channels)
        if self.schedule is not None:
            if not isinstance(self.schedule, str):
                raise SamplingError(f"a schedule is text such as '16:0.3,32:0.7,64', got {self.schedule!r}")
            object.__setattr__(self, "schedule", str(parse_schedule(self.schedule)))

    @property
    def resolved_method(self) -> str:
        return self.method or DEFAULT_METHOD[self.sampler]

    @property
    def resolved_steps(self) -> int:
        return self.steps or DEFAULT_STEPS[self.sampler]

    def override(self, *, sampler=None, method=None, steps=None, cfg_scale=None, cfg_channels=None,
                 schedule=None) -> SamplingDefaults:
        """These settings with the user's choices (those not None) on top. A different sampler drops the
        recorded method and steps, which belong to the recorded sampler."""
        base = self if sampler is None or sampler == self.sampler else SamplingDefaults(
            sampler=sampler, cfg_scale=self.cfg_scale, cfg_channels=self.cfg_channels, schedule=self.schedule)
        chosen = {k: v for k, v in dict(method=method, steps=steps, cfg_scale=cfg_scale, cfg_channels=cfg_channels,
                                        schedule=None if schedule is None else str(schedule)).items() if v is not None}
        return SamplingDefaults(**{**asdict(base), **chosen})

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of :meth:`Pipeline.sample` for these settings."""
        return dict(sampler=self.sampler, method=self.method, steps=self.steps, cfg_scale=self.cfg_scale,
                    cfg_channels=self.cfg_channels, schedule=self.schedule)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SamplingDefaults:
        if not isinstance(d, dict):
            raise SamplingError(f"sampling settings must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise SamplingError(f"unknown sampling settings {sorted(unknown)}")
        return cls(**d)

    def describe(self, *, schedule: bool = True) -> str:
        """One line for people: "ode euler, 20 steps, cfg 2 (all channels), schedule 4:0.3,8:0.6,16"."""
        text = f"{self.sampler} {self.resolved_method}, {self.resolved_steps} steps, cfg {self.cfg_scale:g}"
        if self.cfg_scale > 1:
            text += f" ({self.cfg_channels} channels)"
        return text + (f", schedule {self.schedule or 'largest count'}" if schedule else "")
