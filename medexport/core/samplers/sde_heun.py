"""The SDE's Heun method: two drift evaluations per step."""

from __future__ import annotations

from . import F32, Run, diffusion, register
from ._families import SdeSampler


class SdeHeun(SdeSampler):
    method, order = "heun", 2

    def step(self, run: Run, x, grid, i):
        dt = grid[1] - grid[0]
        info = run.info(i, grid[i])
        t = run.time(grid[i], x)
        dw = run.noise(x) * run.xp.scalar_sqrt(dt)
        xhat = x + run.xp.sqrt(2 * diffusion(x, t, run.settings.diffusion_norm)) * dw
        k1 = run.drift(xhat, t, info)
        xp_ = xhat + dt * k1
        k2 = run.drift(xp_, t + dt, info)
        return xhat + F32(0.5) * dt * (k1 + k2)


register(SdeHeun())
