"""The samplers on torch tensors: the core's samplers (:mod:`medexport.core.samplers`, written once for every
runtime) with torch's noise sources, and dopri5, which needs torch and torchdiffeq and is registered here.

:func:`sample` is the torch form of :func:`medexport.core.samplers.sample`: a ``torch.Generator`` (or torch's
global generator, as the reference) draws the SDE's noise.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..core.samplers import NonFiniteError, OnStep, Run, Sampler, Velocity, register
from ..core.samplers import sample as _sample
from ..core.samplers.ode_dopri5 import OdeDopri5
from ..core.settings import SamplingSettings
from ..core.steps import StepInfo
from ..errors import SamplingError
from .arrays import TorchArrays

logger = logging.getLogger(__name__)

__all__ = ["Dopri5", "NonFiniteError", "OnStep", "Velocity", "sample"]


class Dopri5(OdeDopri5):
    """The ODE's adaptive dopri5 (torchdiffeq, the reference's default), atol / rtol from the settings; it chooses
    its own steps, so it lists none in advance. Its facts are the core's record (:class:`OdeDopri5`)."""

    available = Sampler.available  # on torch arrays; elsewhere the base's message names the fixed-step methods

    def integrate(self, run: Run, x: Tensor) -> Tensor:
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
            v = run.v(y, run.time(tf, y), info)
            if not bool(torch.isfinite(v).all()):
                raise NonFiniteError(info.index, tf, what="the velocity")
            return v

        grid = torch.from_numpy(s.time_grid())
        # The whole grid as the reference passes it: dopri5's steps do not depend on the output points (they are
        # interpolated), so the end state is the same as with [0, 1], and the points make the trace.
        with torch.no_grad():
            solution = odeint(fn, x, grid.to(x.device), method="dopri5", atol=s.atol, rtol=s.rtol)  # (steps, *x)
        logger.debug("dopri5 made %d velocity evaluations", evaluations)
        num_steps = len(grid) - 1
        for i in range(num_steps):
            info = StepInfo(index=i, num_steps=num_steps, t=float(grid[i]), progress=i / num_steps)
            run.done(info, solution[i + 1])
        return solution[-1]


register(Dopri5())


def _torch_noise(generator: torch.Generator | None):
    # Drawn in float32 on the generator's device (the CPU without one) and then moved to the state, as the
    # reference's th.randn(x.size()).to(x): the same seed gives the same noise whatever the state's device.
    device = generator.device if generator is not None else torch.device("cpu")
    return lambda shape: torch.randn(shape, generator=generator, dtype=torch.float32, device=device)


def sample(
    velocity: Velocity,
    x0: Tensor,
    settings: SamplingSettings | None = None,
    *,
    generator: torch.Generator | None = None,
    noise=None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Integrate from the noise ``x0`` at t = 0 to data at t = 1 on torch tensors; returns the final state.

    ``generator`` draws the SDE's noise (z of the state's full shape, float32 on the generator's device, then
    moved to x0's device and dtype); None draws from torch's global generator, as the reference does. ``noise``
    (``noise(shape) -> array``) replaces it, e.g. the per-row numpy generators of a request. The rest: see
    :func:`medexport.core.samplers.sample`.
    """
    if not isinstance(x0, Tensor):
        raise SamplingError("x0 must be a floating-point tensor with a batch dimension first")
    draw = noise if noise is not None else _torch_noise(generator)
    with torch.no_grad():
        return _sample(TorchArrays(x0.device), velocity, x0, settings, noise=draw, on_step=on_step)
