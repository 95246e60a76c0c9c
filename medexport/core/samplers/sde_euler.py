"""The SDE's Euler-Maruyama method (the reference's default): one evaluation per step."""

from __future__ import annotations

from . import Run, diffusion, register
from ._families import SdeSampler


class SdeEuler(SdeSampler):
    """Euler-Maruyama."""

    method, order, default = "euler", 1, True

    def step(self, run: Run, x, grid, i):
        dt = grid[1] - grid[0]
        info = run.info(i, grid[i])
        t = run.time(grid[i], x)
        dw = run.noise(x) * run.xp.scalar_sqrt(dt)
        mean_x = x + run.drift(x, t, info) * dt
        return mean_x + run.xp.sqrt(2 * diffusion(x, t, run.settings.diffusion_norm)) * dw


register(SdeEuler())
