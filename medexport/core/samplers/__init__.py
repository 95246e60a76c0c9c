"""The reference's samplers, written once over an array adapter: SiT's transport code on the Linear path.

Time runs from t = 0 (pure noise) to t = 1 (data): x_t = t * x_data + (1 - t) * noise. The model predicts the
velocity v(x, t); the score and the SDE drift follow from it:

    s = (t * v - x) / (1 - t)          score
    w = norm * (1 - t)                 diffusion coefficient (the reference's ``--diffusion-form sigma``)
    f = v + w * s                      SDE drift

**The registry.** Each sampler family (:class:`Family`: "sde", "ode") has its default method and steps; each
integrator is one :class:`Sampler` subclass in a file of this package, registered by (sampler, method) when the
package is imported, with its facts: evaluations per step (diffusers' ``order``; None for an adaptive one), the
array adapters it runs on, whether it is the family's default. Settings validate against it
(:mod:`medexport.core.settings`), the CLI lists its methods, tune searches its fixed-step methods. A new sampler
is one new file here: a subclass of :class:`FixedStepSampler` that writes one ``step``.

A sampler takes the model as a callable ``velocity(x, t, step) -> v`` and arrays of any adapter (:mod:`..arrays`):
numpy in the torch-free runtime, torch in :class:`medexport.Pipeline`, the same operations in the same order in
both. dopri5 (torchdiffeq) is registered here with its facts, and its torch implementation replaces it when
:mod:`medexport.runtime.samplers` is imported.

The formulas, the time grids and the order of the floating-point operations follow the reference
(``transport/transport.py``, ``transport/integrators.py``, ``transport/path.py``), so that a float32 run on the
same device with the same noise reproduces its numbers. Grid values are float32 numpy scalars, as the
reference's 0-d float32 grid tensors; other constants are Python floats, which numpy and torch both apply in the
state's dtype. One difference on purpose: the reference calls the model twice per SDE drift (once for
the velocity, once more inside the score, with the same inputs); medexport calls it once and uses the result
for both.
"""

from __future__ import annotations

import abc
import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import SamplingError
from ..arrays import Arrays
from ..settings import SamplingSettings
from ..steps import StepInfo

log = logging.getLogger(__name__)

F32 = np.float32
#: ``velocity(x, t, step) -> v``: x the state, t (B,) filled with the current time; v shaped like x.
Velocity = Callable[[object, object, StepInfo], object]
#: ``on_step(step, x_after)``: called after each finished step with the state after it.
OnStep = Callable[[StepInfo, object], None]
#: ``noise(shape) -> array``: standard normal float32 noise of the state's shape (numpy, or the adapter's).
Noise = Callable[[tuple], object]


class NonFiniteError(SamplingError):
    """The sampler state (or a velocity, for dopri5) holds NaN or Inf; ``.step`` and ``.t`` say where."""

    def __init__(self, step: int, t: float, what: str = "the state after the step"):
        self.step = step
        self.t = t
        super().__init__(
            f"non-finite values (NaN or Inf) in {what} at step {step} (t = {t:.4f}). The model overflowed or "
            "was given bad inputs: try float32 or bf16 instead of fp16 engines, a smaller guidance scale, or "
            "check that the engines were built from the right checkpoint."
        )


# ---------------------------------------------------------------------------------------------------------
# The Linear path (SiT's ICPlan): alpha_t = t, sigma_t = 1 - t.


def _expand(t, x):
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))  # (B,) -> (B, 1, ..., 1)


def score(v, x, t):
    """s = (t v - x) / (1 - t), with the variance written as the reference computes it."""
    t = _expand(t, x)
    sigma = 1 - t
    var = sigma**2 + t * sigma  # sigma^2 - (alpha / d_alpha) * d_sigma * sigma with d_alpha = 1, d_sigma = -1
    return (t * v - x) / var


def diffusion(x, t, norm: float):
    return norm * (1 - _expand(t, x))  # the "sigma" form: norm * sigma_t


class Run:
    """One sampling run: calls the velocity, checks what it returns, draws noise, reports steps."""

    def __init__(
        self,
        xp: Arrays,
        velocity: Velocity,
        settings: SamplingSettings,
        *,
        noise: Noise | None = None,
        on_step: OnStep | None = None,
    ):
        self.xp, self.velocity, self.on_step = xp, velocity, on_step
        self.settings = settings.resolved()
        self.num_steps = self.settings.num_model_steps
        self._noise = noise

    def info(self, index: int, t: float) -> StepInfo:
        return StepInfo(index=index, num_steps=self.num_steps, t=float(t), progress=index / self.num_steps)

    def time(self, value, x):
        """(B,) filled with the float32 ``value``, in the state's dtype and place."""
        return self.xp.full(x.shape[0], F32(value), like=x)

    def noise(self, x):
        """z ~ N(0, I) of the state's shape, drawn in float32 and then moved to the state (as the reference's
        th.randn(x.size()).to(x)), so the same noise source gives the same samples on any device."""
        if self._noise is None:
            raise SamplingError("the SDE sampler needs a noise source")
        z = self._noise(tuple(x.shape))
        return self.xp.from_numpy(z, like=x) if isinstance(z, np.ndarray) else z

    def v(self, x, t, info: StepInfo):
        v = self.velocity(x, t, info)
        if not self.xp.is_array(v) or tuple(v.shape) != tuple(x.shape):
            got = tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
            raise SamplingError(
                f"the velocity returned {got} for a state of shape {tuple(x.shape)} at step {info.index}: it "
                "must return an array shaped like its input (for learn_sigma models, the first C channels)"
            )
        return v

    def drift(self, x, t, info: StepInfo):
        """The SDE drift f = v + w * s, from one velocity evaluation."""
        v = self.v(x, t, info)
        return v + diffusion(x, t, self.settings.diffusion_norm) * score(v, x, t)

    def done(self, info: StepInfo, x) -> None:
        if not self.xp.all_finite(x):
            raise NonFiniteError(info.index, info.t)
        if self.on_step is not None:
            self.on_step(info, x)


class Sampler(abc.ABC):
    """One integrator of one sampler family, registered by (sampler, method).

    Class attributes: ``sampler`` (the family), ``method``, ``order`` (velocity evaluations per step; None for
    an adaptive integrator, which chooses its own steps), ``arrays`` (the adapters it runs on; None: every
    one), ``default`` (the family's default method), ``summary`` (one line for ``--help``)."""

    sampler: str = ""
    method: str = ""
    order: int | None = 1
    arrays: tuple[str, ...] | None = None
    default: bool = False
    summary: str = ""

    @property
    def fixed_step(self) -> bool:
        """Whether it runs on the settings' time grid (steps known in advance: schedules, tune, costs)."""
        return self.order is not None

    def available(self, xp: Arrays | None = None) -> None:
        """SamplingError when it cannot run (on ``xp``'s arrays)."""
        if xp is not None and self.arrays is not None and xp.name not in self.arrays:
            raise SamplingError(
                f"the {self.sampler} sampler's {self.method} method runs on {', '.join(self.arrays)} "
                f"arrays (medexport.Pipeline), not {xp.name} (the torch-free runtime): choose "
                f"--method {' or '.join(fixed_methods(self.sampler))} here"
            )

    def grid(self, settings: SamplingSettings) -> np.ndarray:
        return settings.time_grid()

    @abc.abstractmethod
    def integrate(self, run: Run, x):
        """The final state from ``x``, reporting each finished step through ``run.done``."""


class FixedStepSampler(Sampler):
    """A sampler on the settings' time grid: it writes one :meth:`step` (and the SDE its last step)."""

    @abc.abstractmethod
    def step(self, run: Run, x, grid: np.ndarray, i: int):
        """The state after step ``i`` from ``x``."""

    def integrate(self, run: Run, x):
        grid = self.grid(run.settings)
        for i in range(len(grid) - 1):
            x = self.step(run, x, grid, i)
            run.done(run.info(i, grid[i]), x)
        return x


# ---------------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Family:
    """A sampler family: its name and its default number of grid points (the reference's)."""

    name: str
    default_steps: int
    summary: str = ""


_FAMILIES: dict[str, Family] = {}
_REGISTRY: dict[tuple[str, str], Sampler] = {}


def register_family(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def register(sampler: Sampler) -> Sampler:
    """Make ``sampler`` the one that runs its (sampler, method) (a later registration replaces an earlier one:
    how the torch runtime puts the real dopri5 in place of the core's record of it)."""
    if sampler.sampler not in _FAMILIES:
        raise ValueError(f"{type(sampler).__name__}: unknown sampler family {sampler.sampler!r}")
    _REGISTRY[sampler.sampler, sampler.method] = sampler
    return sampler


def families() -> tuple[str, ...]:
    """The sampler families, as the CLI lists them."""
    return tuple(_FAMILIES)


def family(name: str) -> Family:
    return _FAMILIES[name]


def methods(sampler: str) -> tuple[str, ...]:
    """The methods of ``sampler``: the fixed-step ones by evaluations per step, then the adaptive ones."""
    found = [(r.order is None, r.order or 0, m) for (s, m), r in _REGISTRY.items() if s == sampler]
    return tuple(m for *_, m in sorted(found))


def fixed_methods(sampler: str) -> tuple[str, ...]:
    """The fixed-step methods of ``sampler`` (what schedules, tune and the torch-free runtime can use)."""
    return tuple(m for m in methods(sampler) if _REGISTRY[sampler, m].fixed_step)


def default_method(sampler: str) -> str:
    found = [m for (s, m), r in _REGISTRY.items() if s == sampler and r.default]
    if len(found) != 1:
        raise RuntimeError(f"the {sampler} family needs exactly one default method, has {found}")
    return found[0]


def lookup(sampler: str, method: str) -> Sampler | None:
    """The registered sampler of (sampler, method), or None."""
    return _REGISTRY.get((sampler, method))


def get(settings: SamplingSettings, xp: Arrays | None = None) -> Sampler:
    """The sampler ``settings`` name; SamplingError when it is not available (to this adapter)."""
    s = settings.resolved()
    found = _REGISTRY.get((s.sampler, s.method))
    if found is None:
        raise SamplingError(f"no sampler is registered for {s.sampler} {s.method}")
    found.available(xp)
    return found


def sample(
    xp: Arrays,
    velocity: Velocity,
    x0,
    settings: SamplingSettings | None = None,
    *,
    noise: Noise | None = None,
    on_step: OnStep | None = None,
):
    """Integrate from the noise ``x0`` at t = 0 to data at t = 1; returns the final state, shaped like x0.

    Args:
        xp: the array adapter of ``x0``.
        velocity: ``velocity(x, t, step) -> v``; the caller wraps the model, guidance and the mediator
            schedule into it. t is (B,) filled with the current time, a float32 value in x's dtype.
        x0: the initial noise, (B, ...) floating point; B includes a CFG doubling if the caller does one.
        settings: how to sample; None means the reference's defaults (SDE Euler-Maruyama, 250 steps).
        noise: ``noise(shape)`` draws the SDE's z ~ N(0, I) of the state's full shape, float32 (numpy arrays
            are moved to x0's device and dtype). The ODE draws nothing.
        on_step: ``on_step(step, x_after)``, called after each finished step, the SDE's last step included
            (not for the identity last step "none"); this is where an adaptive schedule observes the state
            and picks the model for the next step.

    Raises:
        SamplingError: a bad input; :class:`NonFiniteError` (``.step``, ``.t``) when a step produced NaN or Inf.
    """
    settings = settings if settings is not None else SamplingSettings()
    if not xp.is_array(x0) or not xp.is_float(x0) or x0.ndim < 1:
        raise SamplingError("x0 must be a floating-point array with a batch dimension first")
    sampler = get(settings, xp)
    run = Run(xp, velocity, settings, noise=noise, on_step=on_step)
    log.debug("sampling %s with %s", tuple(x0.shape), run.settings)
    return sampler.integrate(run, x0)


# Every sampler of this package, one module each: importing the package registers them all (the families first).
importlib.import_module(f"{__name__}._families")
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
