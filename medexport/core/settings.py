"""How to sample, as one type: :class:`SamplingSettings`.

One frozen dataclass serves every place sampling settings appear: a bundle's recommended settings (its
manifest's ``sampling`` record), a user's choices (CLI options, the fields of a :class:`SampleRequest`), and the
complete settings a run uses. A field left as None is "not chosen": :meth:`SamplingSettings.over` puts choices
on top of recommendations (once per run), :meth:`SamplingSettings.resolved` fills what is still open with the
reference's defaults (SDE Euler-Maruyama, 250 steps, last step "Mean", no guidance, the largest count alone).
Every value is checked here, whichever runtime (torch or numpy) runs it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from fractions import Fraction

import numpy as np

from ..errors import SamplingError, ScheduleError

LAST_STEPS = ("mean", "euler", "tweedie", "none")
CFG_CHANNELS = ("3", "all")
#: The reference's ``--sample-eps``: without a last step the SDE grid ends at 1 - SAMPLE_EPS, not at 1.
SAMPLE_EPS = 1e-3
#: The most grid points a run may have: far beyond any published setting, and it bounds a run's work up front.
MAX_STEPS = 100_000
#: The fields a bundle records as its model's recommendation (the manifest's ``sampling`` object).
RECOMMENDED = ("sampler", "method", "steps", "cfg_scale", "cfg_channels", "schedule")
#: What the reference uses where nothing is chosen.
REFERENCE = dict(
    sampler="sde",
    cfg_scale=1.0,
    cfg_channels="3",
    last_step="mean",
    last_step_size=0.04,
    diffusion_norm=1.0,
    atol=1e-6,
    rtol=1e-3,
)


def _registry():
    """The sampler registry (:mod:`medexport.core.samplers`): which samplers and methods exist, their defaults
    and evaluations per step. Imported on first use: the samplers' module imports this one."""
    from . import samplers

    return samplers


def __getattr__(name: str):
    """The registry's facts under their earlier names: SAMPLERS, METHODS, DEFAULT_METHOD, DEFAULT_STEPS."""
    r = _registry()
    if name == "SAMPLERS":
        return r.families()
    if name == "METHODS":
        return {f: r.methods(f) for f in r.families()}
    if name == "DEFAULT_METHOD":
        return {f: r.default_method(f) for f in r.families()}
    if name == "DEFAULT_STEPS":
        return {f: r.family(f).default_steps for f in r.families()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=64)
def _linspace(end: float, n: int) -> tuple:
    f32 = np.float32
    end32 = f32(end)
    step = end32 / f32(n - 1)
    values = []
    for i in range(n):
        if i < n // 2:
            values.append(step * f32(i))  # start + step * i with start = 0: one rounding
        else:  # end - step * (n - 1 - i), fused (one rounding), as torch's kernel computes it
            exact = Fraction(float(end32)) - Fraction(float(step)) * (n - 1 - i)
            near = f32(float(exact))
            candidates = (np.nextafter(near, f32(-np.inf)), near, np.nextafter(near, f32(np.inf)))
            values.append(min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(np.uint32)) & 1)))
    return tuple(values)


def linspace_f32(end: float, n: int) -> np.ndarray:
    """linspace(0, end, n) in float32 exactly as torch.linspace computes it on the CPU: step = end / (n - 1) in
    float32; the first half as step * i, the second half as end - step * (n - 1 - i) with one rounding (torch's
    kernel is compiled with fused multiply-adds). Checked against torch.linspace in the tests."""
    return np.asarray(_linspace(float(end), int(n)), dtype=np.float32)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def _name(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise SamplingError(f"{field} must be a string, got {value!r}")
    return value.strip().lower()


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample: one field per option of the reference's ``sample.py`` and medexport's CLI (one-to-one).
    None means "not chosen" (see the module's docstring).

    Attributes:
        sampler: "sde" (the reference default for its FID numbers) or "ode".
        method: the integrator. sde: "euler" (Euler-Maruyama, one evaluation per step) or "heun" (two);
            ode: "euler", "heun" (torchdiffeq's heun2 form, two evaluations per step) or "dopri5" (adaptive,
            needs torch and torchdiffeq). None: "euler" for sde, "dopri5" for ode, as the reference.
        steps: the number of grid points, the reference's ``--num-sampling-steps``; None: 250 for sde, 50 for
            ode. sde: grid linspace(0, 1 - last_step_size, steps), steps - 1 stochastic steps, then the last
            step, so 250 Euler-Maruyama steps with a last step make exactly 250 evaluations. ode: grid
            linspace(0, 1, steps), so a fixed-step run makes steps - 1 steps (Euler with steps=50: 49
            evaluations); dopri5 chooses its own steps and returns the state at these grid points.
        cfg_scale: classifier-free guidance scale, a finite number >= 1 (1: none, the batch is not doubled).
        cfg_channels: "3" (the reference: guide the first 3 channels, all of a model with fewer) or "all".
        schedule: which mediator count serves which steps, in its text form ("16:0.3,32:0.7,64",
            "adaptive:16,32,64:ratios=0.5,0.2"), stored canonical; None: the largest count alone.
        last_step: sde only (ignored by ode): the final, noise-free step from t = 1 - last_step_size to 1.
            "mean": x + f(x, t) * size (the reference default); "euler": x + v(x, t) * size; "tweedie": the
            reference's Tweedie estimate x / t + (1 - t)^2 / t * s(x, t); "none": no last step, and the grid
            then ends at 1 - 1e-3 as in the reference. Each but "none" is one more evaluation.
        last_step_size: sde only: the size of the last step, in (0, 1); 0.04 as the reference.
        diffusion_norm: sde only: the magnitude of the diffusion coefficient w = norm * (1 - t); >= 0.
        atol, rtol: dopri5 only: absolute and relative error tolerances, > 0.

    Names are case-insensitive ("Mean" and "Euler" as the reference spells them are accepted) and stored in
    lower case.
    """

    sampler: str | None = None
    method: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    cfg_channels: str | None = None
    schedule: str | None = None
    last_step: str | None = None
    last_step_size: float | None = None
    diffusion_norm: float | None = None
    atol: float | None = None
    rtol: float | None = None

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        registry = _registry()
        if self.sampler is not None:
            sampler = _name("sampler", self.sampler)
            if sampler not in registry.families():
                raise SamplingError(f"unknown sampler {self.sampler!r}: choose one of {', '.join(registry.families())}")
            put("sampler", sampler)
        if self.method is not None:
            method = _name("method", self.method)
            allowed = (
                registry.methods(self.sampler)
                if self.sampler
                else tuple(dict.fromkeys(m for f in registry.families() for m in registry.methods(f)))
            )
            if method not in allowed:
                owners = [f for f in registry.families() if method in registry.methods(f)]
                raise SamplingError(
                    f"unknown {self.sampler + ' ' if self.sampler else ''}method {self.method!r}: choose one of "
                    f"{', '.join(allowed)}"
                    + (f" ({method} is an {owners[0]} method: use --sampler {owners[0]})" if owners else "")
                )
            put("method", method)
        if self.steps is not None:
            if (
                isinstance(self.steps, (bool, np.bool_))
                or not isinstance(self.steps, (int, np.integer))
                or not 2 <= self.steps <= MAX_STEPS
            ):
                raise SamplingError(
                    f"steps must be an integer in 2..{MAX_STEPS} (it counts grid points, ends "
                    f"included), got {self.steps!r}"
                )
            put("steps", int(self.steps))
        if self.cfg_scale is not None:
            if not _is_number(self.cfg_scale) or self.cfg_scale < 1:
                raise SamplingError(
                    f"cfg scale {self.cfg_scale!r} is below 1 or not a finite number: use 1 (no "
                    f"guidance) or more (e.g. 4.0)"
                )
            put("cfg_scale", float(self.cfg_scale))
        if self.cfg_channels is not None:
            channels = str(self.cfg_channels).strip().lower()
            if channels not in CFG_CHANNELS or isinstance(self.cfg_channels, bool):
                raise SamplingError(f"cfg channels must be '3' (the reference) or 'all', got {self.cfg_channels!r}")
            put("cfg_channels", channels)
        if self.schedule is not None:
            if isinstance(self.schedule, (int, np.integer)) and not isinstance(self.schedule, bool):
                put("schedule", str(int(self.schedule)))  # one count for every step
            elif not isinstance(self.schedule, str):
                raise ScheduleError(f"a schedule is text such as '16:0.3,32:0.7,64', got {self.schedule!r}")
            from .schedule_text import parse_schedule

            put("schedule", str(parse_schedule(self.schedule)))
        if self.last_step is not None:
            last = _name("last_step", self.last_step)
            if last not in LAST_STEPS:
                raise SamplingError(f"unknown last step {self.last_step!r}: choose one of {', '.join(LAST_STEPS)}")
            put("last_step", last)
        if self.last_step_size is not None and (not _is_number(self.last_step_size) or not 0 < self.last_step_size < 1):
            raise SamplingError(
                f"last_step_size must be in (0, 1), got {self.last_step_size!r}; the reference uses 0.04"
            )
        if self.diffusion_norm is not None and (not _is_number(self.diffusion_norm) or self.diffusion_norm < 0):
            raise SamplingError(f"diffusion_norm must be a finite number >= 0, got {self.diffusion_norm!r}")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise SamplingError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("last_step_size", "diffusion_norm", "atol", "rtol"):
            if getattr(self, name) is not None:
                put(name, float(getattr(self, name)))

    # -- merging ---------------------------------------------------------------------------------------------
    def over(self, base: SamplingSettings | None) -> SamplingSettings:
        """These choices on top of ``base`` (a recommendation). A sampler other than the base's drops the base's
        method and steps, which belong to its sampler."""
        if base is None:
            return self
        below = asdict(base)
        if self.sampler is not None and self.sampler != base.sampler:
            below.update(method=None, steps=None)
        return SamplingSettings(**{**below, **{k: v for k, v in asdict(self).items() if v is not None}})

    def override(self, **choices) -> SamplingSettings:
        """These settings with ``choices`` (those not None) on top: ``recommended.override(steps=8)``."""
        return SamplingSettings(**{k: v for k, v in choices.items() if v is not None}).over(self)

    def resolved(self) -> SamplingSettings:
        """Every field set: what is not chosen takes the reference's default (the schedule stays None: "the
        largest count", which only the runtime knows). A last step other than the default with the ODE is
        refused: the last step is the SDE's."""
        if self.sampler == "ode" and self.last_step not in (None, "mean"):
            raise SamplingError(
                f"--last-step {self.last_step} applies to the SDE sampler only (the ODE integrates to "
                f"t = 1): drop it, or use --sampler sde"
            )
        if all(v is not None for k, v in asdict(self).items() if k != "schedule"):
            return self  # resolved already (a run resolves once; the sampler and its Run see the same object)
        d = {**REFERENCE, **{k: v for k, v in asdict(self).items() if v is not None}}
        registry = _registry()
        d.setdefault("method", registry.default_method(d["sampler"]))
        d.setdefault("steps", registry.family(d["sampler"]).default_steps)
        return SamplingSettings(**d)

    # -- what a run is --------------------------------------------------------------------------------------
    @property
    def resolved_sampler(self) -> str:
        return self.sampler or REFERENCE["sampler"]

    @property
    def resolved_method(self) -> str:
        """The integrator that runs: ``method``, or the sampler's default."""
        return self.method or _registry().default_method(self.resolved_sampler)

    @property
    def resolved_steps(self) -> int:
        """The number of grid points: ``steps``, or the sampler's default."""
        return self.steps or _registry().family(self.resolved_sampler).default_steps

    @property
    def resolved_last_step(self) -> str:
        return self.last_step or REFERENCE["last_step"]

    @property
    def resolved_last_step_size(self) -> float:
        return self.last_step_size if self.last_step_size is not None else REFERENCE["last_step_size"]

    @property
    def resolved_cfg_scale(self) -> float:
        return self.cfg_scale if self.cfg_scale is not None else REFERENCE["cfg_scale"]

    @property
    def guided(self) -> bool:
        return self.resolved_cfg_scale > 1.0

    @property
    def has_last_step(self) -> bool:
        """Whether the run ends with an SDE last step that evaluates the model."""
        return self.resolved_sampler == "sde" and self.resolved_last_step != "none"

    @property
    def num_model_steps(self) -> int | None:
        """How many steps a run makes (what :attr:`StepInfo.num_steps` says); None for dopri5."""
        if self.evaluations_per_step is None:  # adaptive: it chooses its own steps
            return None
        return self.resolved_steps - 1 + (1 if self.has_last_step else 0)

    @property
    def evaluations_per_step(self) -> int | None:
        """Velocity evaluations per step (the SDE's last step makes one); None for an adaptive method (dopri5):
        the registered sampler's ``order``."""
        found = _registry().lookup(self.resolved_sampler, self.resolved_method)
        return found.order if found is not None else None

    @property
    def num_evaluations(self) -> int | None:
        """Velocity evaluations of a whole run, e.g. 250 for the SDE default; None for dopri5."""
        per_step = self.evaluations_per_step
        if per_step is None:
            return None
        return per_step * (self.resolved_steps - 1) + (1 if self.has_last_step else 0)

    @property
    def grid_end(self) -> float:
        """The last grid point: 1 - last_step_size (sde), 1 - 1e-3 (sde without a last step), 1 (ode)."""
        if self.resolved_sampler == "ode":
            return 1.0
        return 1 - self.resolved_last_step_size if self.has_last_step else 1 - SAMPLE_EPS

    def time_grid(self) -> np.ndarray:
        """The float32 grid linspace(0, grid_end, steps), bit for bit as torch.linspace makes it (see
        :func:`linspace_f32`), so that every runtime, with torch or without, sees the reference's grid."""
        return linspace_f32(self.grid_end, self.resolved_steps)

    # -- JSON and people --------------------------------------------------------------------------------------
    def to_dict(self, keys: tuple[str, ...] | None = None) -> dict:
        """The fields (``keys``: only those, e.g. :data:`RECOMMENDED` for a manifest), None included."""
        d = asdict(self)
        return {k: d[k] for k in keys} if keys else d

    def recommendation(self) -> dict:
        """The manifest's ``sampling`` record of these settings."""
        reference = SamplingSettings(**{k: REFERENCE[k] for k in RECOMMENDED if k in REFERENCE})
        return self.over(reference).to_dict(RECOMMENDED)

    @classmethod
    def from_dict(cls, d: object, *, what: str = "sampling settings") -> SamplingSettings:
        if not isinstance(d, dict):
            raise SamplingError(f"{what} must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SamplingError(f"unknown {what} {unknown}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def describe(self, *, schedule: bool = True) -> str:
        """One line for people: "ode euler, 20 steps, cfg 2 (all channels), schedule 4:0.3,8:0.6,16"."""
        cfg = self.resolved_cfg_scale
        text = f"{self.resolved_sampler} {self.resolved_method}, {self.resolved_steps} steps, cfg {cfg:g}"
        if cfg > 1:
            text += f" ({self.cfg_channels or '3'} channels)"
        return text + (f", schedule {self.schedule or 'largest count'}" if schedule else "")
