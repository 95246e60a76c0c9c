"""The ODE's Euler method (torchdiffeq's fixed-grid euler): one evaluation per step."""

from __future__ import annotations

from . import FixedStepSampler, Run, register


class OdeEuler(FixedStepSampler):
    sampler, method, order = "ode", "euler", 1

    def step(self, run: Run, x, grid, i):
        t0 = grid[i]
        dt = grid[i + 1] - t0  # float32, per step as torchdiffeq's fixed-grid solvers
        k1 = run.v(x, run.time(t0, x), run.info(i, t0))
        return x + dt * k1


register(OdeEuler())
