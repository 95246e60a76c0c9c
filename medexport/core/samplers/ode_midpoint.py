"""The ODE's midpoint method (torchdiffeq's fixed-grid ``midpoint``, which the reference's ODE sampler accepts
as its method): two evaluations per step, second order."""

from __future__ import annotations

from . import F32, FixedStepSampler, Run, register


class OdeMidpoint(FixedStepSampler):
    """k1 at (t0, x); k2 at the midpoint (t0 + dt/2, x + dt/2 k1); x + dt k2, in torchdiffeq's order of
    operations."""

    sampler, method, order = "ode", "midpoint", 2
    summary = "explicit midpoint, two evaluations per step"

    def step(self, run: Run, x, grid, i):
        t0 = grid[i]
        dt = grid[i + 1] - t0
        half = F32(0.5) * dt
        info = run.info(i, t0)
        k1 = run.v(x, run.time(t0, x), info)
        k2 = run.v(x + k1 * half, run.time(t0 + half, x), info)
        return x + dt * k2


register(OdeMidpoint())
