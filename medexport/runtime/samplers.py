"""The samplers the reference uses: SiT's transport code on the Linear path with velocity prediction.

Time runs from t = 0 (pure noise) to t = 1 (data): x_t = t * x_data + (1 - t) * noise. The model predicts the
velocity v(x, t); the score and the SDE drift follow from it (see ``/spec/sampling.md``):

    s = (t * v - x) / (1 - t)          score
    w = norm * (1 - t)                 diffusion coefficient (the reference's ``--diffusion-form sigma``)
    f = v + w * s                      SDE drift

A sampler takes the model as a callable ``velocity(x, t, step) -> v`` (x: the state, t: (B,) filled with the
current time, step: a :class:`StepInfo`), so any backend can stand behind it, and the caller wraps
classifier-free guidance and the choice of mediator count (a schedule) into that callable. ``on_step`` reports
each finished step, which is what an adaptive schedule and a trace need.

The formulas, the time grids and the order of the floating-point operations follow the reference
(``transport/transport.py``, ``transport/integrators.py``, ``transport/path.py``), so that a float32 run on the
same device with the same noise reproduces its numbers. One difference on purpose: the reference calls the
model twice per SDE drift (once for the velocity, once more inside the score, with the same inputs); medexport
calls it once and uses the result for both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import SamplingError
from .settings import (DEFAULT_METHOD, DEFAULT_STEPS, LAST_STEPS, METHODS, SAMPLE_EPS, SAMPLERS,  # noqa: F401
                       SamplerSettings, StepInfo)

logger = logging.getLogger(__name__)

#: ``velocity(x, t, step) -> v``: x the state, t (B,) filled with the current time; v shaped like x.
Velocity = Callable[[Tensor, Tensor, StepInfo], Tensor]
#: ``on_step(step, x_after)``: called after each finished step with the state after it.
OnStep = Callable[[StepInfo, Tensor], None]


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


def _time(value: float, x: Tensor) -> Tensor:
    """(B,) filled with ``value``: a float32 value like the reference's grid, in the state's dtype."""
    return torch.full((x.shape[0],), value, dtype=torch.float32, device=x.device).to(x.dtype)


def _expand(t: Tensor, x: Tensor) -> Tensor:
    return t.view(t.shape[0], *([1] * (x.ndim - 1)))  # (B,) -> (B, 1, ..., 1)


def _score(v: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """s = (t v - x) / (1 - t), with the variance written as the reference computes it."""
    t = _expand(t, x)
    sigma = 1 - t
    var = sigma**2 + t * sigma  # sigma^2 - (alpha / d_alpha) * d_sigma * sigma with d_alpha = 1, d_sigma = -1
    return (t * v - x) / var


def _diffusion(x: Tensor, t: Tensor, norm: float) -> Tensor:
    return norm * (1 - _expand(t, x))  # the "sigma" form: norm * sigma_t


class _Run:
    """One sampling run: calls the velocity, checks what it returns, reports steps."""

    def __init__(self, velocity: Velocity, on_step: OnStep | None, settings: SamplerSettings):
        self.velocity = velocity
        self.on_step = on_step
        self.settings = settings
        self.num_steps = settings.num_model_steps

    def info(self, index: int, t: float) -> StepInfo:
        return StepInfo(index=index, num_steps=self.num_steps, t=t, progress=index / self.num_steps)

    def v(self, x: Tensor, t: Tensor, info: StepInfo) -> Tensor:
        v = self.velocity(x, t, info)
        if not isinstance(v, Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise SamplingError(
                f"the velocity returned {got} for a state of shape {tuple(x.shape)} at step {info.index}: it "
                "must return a tensor shaped like its input (for learn_sigma models, the first C channels)"
            )
        return v

    def drift(self, x: Tensor, t: Tensor, info: StepInfo) -> Tensor:
        """The SDE drift f = v + w * s, from one velocity evaluation."""
        v = self.v(x, t, info)
        return v + _diffusion(x, t, self.settings.diffusion_norm) * _score(v, x, t)

    def done(self, info: StepInfo, x: Tensor) -> None:
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(info.index, info.t)
        if self.on_step is not None:
            self.on_step(info, x)


class RowGenerators:
    """One generator per row of the state: row r's noise comes from ``generators[r]`` alone, so an image's
    samples do not depend on which other images share its batch (``medexport generate`` across ranks)."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = list(generators)


def _noise(x: Tensor, generator: torch.Generator | RowGenerators | None) -> Tensor:
    # Drawn in float32 on the generator's device (the CPU without one) and then moved to the state, as the
    # reference's th.randn(x.size()).to(x): the same seed gives the same noise whatever the state's device.
    if isinstance(generator, RowGenerators):
        if len(generator.generators) != x.shape[0]:
            raise SamplingError(f"{len(generator.generators)} row generators for a state of {x.shape[0]} rows")
        return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in generator.generators]
                           ).to(x)
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(x.shape, generator=generator, dtype=torch.float32, device=device).to(x)


def _sample_sde(run: _Run, x: Tensor, generator: torch.Generator | None) -> Tensor:
    s = run.settings
    grid = s.time_grid()  # float32, on the CPU like the reference's
    dt = grid[1] - grid[0]  # 0-d float32
    heun = s.resolved_method == "heun"
    for i, ti in enumerate(grid[:-1]):
        info = run.info(i, float(ti))
        t = _time(info.t, x)
        dw = _noise(x, generator) * torch.sqrt(dt)
        if heun:
            xhat = x + torch.sqrt(2 * _diffusion(x, t, s.diffusion_norm)) * dw
            k1 = run.drift(xhat, t, info)
            xp = xhat + dt * k1
            k2 = run.drift(xp, t + dt, info)
            x = xhat + 0.5 * dt * (k1 + k2)
        else:  # Euler-Maruyama
            drift = run.drift(x, t, info)
            mean_x = x + drift * dt
            x = mean_x + torch.sqrt(2 * _diffusion(x, t, s.diffusion_norm)) * dw
        run.done(info, x)

    if not s.has_last_step:
        return x
    t1 = 1 - s.last_step_size
    info = run.info(s.resolved_steps - 1, t1)
    t = _time(t1, x)
    if s.last_step == "mean":
        x = x + run.drift(x, t, info) * s.last_step_size
    elif s.last_step == "euler":
        x = x + run.v(x, t, info) * s.last_step_size
    else:  # tweedie: x / alpha + sigma^2 / alpha * score, alpha and sigma read off the first sample's time
        alpha, sigma = t[0], 1 - t[0]
        x = x / alpha + (sigma**2) / alpha * _score(run.v(x, t, info), x, t)
    run.done(info, x)
    return x


def _sample_ode_fixed(run: _Run, x: Tensor) -> Tensor:
    grid = run.settings.time_grid()
    heun = run.settings.resolved_method == "heun"
    for i in range(len(grid) - 1):
        t0 = grid[i]
        dt = grid[i + 1] - t0  # 0-d float32, per step as torchdiffeq's fixed-grid solvers
        info = run.info(i, float(t0))
        k1 = run.v(x, _time(info.t, x), info)
        if heun:  # torchdiffeq's heun2 tableau: k2 at (t0 + dt, x + dt k1), weights 1/2, 1/2
            k2 = run.v(x + dt * k1, _time(float(t0 + dt), x), info)
            x = x + dt * (k1 * 0.5 + k2 * 0.5)
        else:
            x = x + dt * k1
        run.done(info, x)
    return x


def _sample_dopri5(run: _Run, x: Tensor) -> Tensor:
    try:
        from torchdiffeq import odeint
    except ImportError as e:
        raise SamplingError(
            "the ode sampler's dopri5 method needs torchdiffeq: pip install torchdiffeq (or medexport[ode]), "
            "or choose --method euler or heun"
        ) from e
    s = run.settings
    evaluations = 0

    def fn(t: Tensor, y: Tensor) -> Tensor:
        nonlocal evaluations
        tf = float(t)
        info = StepInfo(index=evaluations, num_steps=None, t=tf, progress=min(max(tf, 0.0), 1.0))
        evaluations += 1
        v = run.v(y, _time(tf, y), info)
        if not bool(torch.isfinite(v).all()):
            raise NonFiniteError(info.index, tf, what="the velocity")
        return v

    grid = s.time_grid()
    # The whole grid as the reference passes it: dopri5's steps do not depend on the output points (they are
    # interpolated), so the end state is the same as with [0, 1], and the points make the trace.
    solution = odeint(fn, x, grid.to(x.device), method="dopri5", atol=s.atol, rtol=s.rtol)  # (steps, *x.shape)
    logger.debug("dopri5 made %d velocity evaluations", evaluations)
    num_steps = len(grid) - 1
    for i in range(num_steps):
        info = StepInfo(index=i, num_steps=num_steps, t=float(grid[i]), progress=i / num_steps)
        run.done(info, solution[i + 1])
    return solution[-1]


def sample(
    velocity: Velocity,
    x0: Tensor,
    settings: SamplerSettings | None = None,
    *,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Integrate from the noise ``x0`` at t = 0 to data at t = 1; returns the final state, shaped like x0.

    Args:
        velocity: ``velocity(x, t, step) -> v``; the caller wraps the model, guidance and the mediator
            schedule into it. t is (B,) filled with the current time, a float32 value in x's dtype.
        x0: the initial noise, (B, ...) floating point; B includes a CFG doubling if the caller does one.
        settings: how to sample; None means the defaults (the reference's SDE).
        generator: draws the SDE's noise: z ~ N(0, I) of the state's full shape, drawn in float32 on the
            generator's device and then moved to x0's device and dtype, so a seeded CPU generator gives the
            same samples on any device. None draws from torch's global generator, as the reference does.
            A :class:`RowGenerators` draws each row's noise from that row's own generator.
            The ODE draws nothing.
        on_step: ``on_step(step, x_after)``, called after each finished step, the SDE's last step included
            (not for the identity last step "none"); this is where an adaptive schedule observes the state
            and picks the model for the next step. For dopri5 it is called after the solve, once per output
            grid point (steps - 1 times, interpolated states), too late to influence the run.

    Raises:
        SamplingError: a bad input; :class:`NonFiniteError` (``.step``, ``.t``) when a step produced NaN or Inf.
    """
    settings = settings if settings is not None else SamplerSettings()
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.ndim < 1:
        raise SamplingError("x0 must be a floating-point tensor with a batch dimension first")
    run = _Run(velocity, on_step, settings)
    logger.debug("sampling %s with %s", tuple(x0.shape), settings)
    with torch.no_grad():
        if settings.sampler == "sde":
            return _sample_sde(run, x0, generator)
        if settings.resolved_method == "dopri5":
            return _sample_dopri5(run, x0)
        return _sample_ode_fixed(run, x0)
