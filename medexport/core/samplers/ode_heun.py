"""The ODE's Heun method (torchdiffeq's heun2): two evaluations per step."""

from __future__ import annotations

from . import FixedStepSampler, Run, register


class OdeHeun(FixedStepSampler):
    """torchdiffeq's heun2 tableau: k2 at (t0 + dt, x + dt k1), weights 1/2, 1/2."""

    sampler, method, order = "ode", "heun", 2

    def step(self, run: Run, x, grid, i):
        t0 = grid[i]
        dt = grid[i + 1] - t0
        info = run.info(i, t0)
        k1 = run.v(x, run.time(t0, x), info)
        k2 = run.v(x + dt * k1, run.time(t0 + dt, x), info)
        return x + dt * (k1 * 0.5 + k2 * 0.5)


register(OdeHeun())
