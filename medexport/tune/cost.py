"""The exact cost of a fixed schedule before anything runs (:class:`CostModel`: the sampler dry-run, GFLOPs
per forward, measured ms per evaluation), schedules as step allocations, and the allocations on a budget's
edge."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..core.arrays import NUMPY
from ..core.samplers import sample
from ..core.schedule import FixedSchedule
from ..core.settings import SamplingSettings
from ..core.steps import StepInfo
from ..model import forward_flops
from .budget import Cost, TuneError


def evaluation_steps(settings: SamplingSettings) -> list[StepInfo]:
    """The StepInfo of every model evaluation a run makes, by dry-running the sampler with no model."""
    if settings.num_model_steps is None:
        raise TuneError("tuning needs a fixed-step sampler: dopri5 chooses its own steps. Use --method euler or heun")
    seen: list[StepInfo] = []

    def velocity(x, t, step):
        seen.append(step)
        return np.zeros_like(x)

    sample(NUMPY, velocity, np.zeros((1, 1), np.float32), settings, noise=lambda shape: np.zeros(shape, np.float32))
    return seen


def allocation_schedule(counts: list[int], steps: list[int], total: int) -> str:
    """The canonical text of a fixed schedule giving ``steps[i]`` of ``total`` steps to ``counts[i]``, in order."""
    used = [(n, k) for n, k in zip(counts, steps) if k > 0]
    if len(used) == 1:
        return str(used[0][0])
    parts, done = [], 0
    for n, k in used[:-1]:
        done += k
        parts.append(f"{n}:{_fraction(done, total)}")
    return ",".join(parts + [str(used[-1][0])])


def _fraction(k: int, total: int) -> str:
    """The shortest decimal v with (k - 1)/total < v <= k/total: step i < k goes to the segment exactly when
    i/total < v, the schedule's own rule."""
    for digits in range(1, 12):
        scale = 10**digits
        value = math.floor(k * scale / total) / scale
        if (k - 1) / total < value <= k / total and value > 0:
            return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return repr(k / total)


class CostModel:
    """Exact per-image cost of a fixed schedule: GFLOPs from the architecture, ms from measured step times."""

    def __init__(self, pipe, settings: SamplingSettings, cfg_scale: float):
        self.steps = evaluation_steps(settings)
        self.num_steps = settings.num_model_steps
        self.factor = 2 if cfg_scale > 1.0 else 1  # guidance doubles every evaluation's batch
        self.gflops = {n: forward_flops(pipe.config.with_mediators(n)) / 1e9 for n in pipe.counts}
        self.ms_per_eval: dict[int, float] = {}  # per image, filled in from static runs

    def evaluations(self, schedule: FixedSchedule) -> dict[int, int]:
        out: dict[int, int] = {}
        for step in self.steps:
            n = schedule.model_for(step)
            out[n] = out.get(n, 0) + 1
        return out

    def cost(self, schedule: FixedSchedule) -> Cost:
        return Cost(self.gflops_per_image(schedule), self.ms_per_image(schedule))

    def gflops_per_image(self, schedule: FixedSchedule) -> float:
        return self.factor * sum(k * self.gflops[n] for n, k in self.evaluations(schedule).items())

    def ms_per_image(self, schedule: FixedSchedule) -> float | None:
        """Predicted from each count's measured ms per evaluation; None until every count used is timed."""
        evals = self.evaluations(schedule)
        if any(n not in self.ms_per_eval for n in evals):
            return None
        return sum(k * self.ms_per_eval[n] for n, k in evals.items())


def edge_allocations(m: int, total: int, fits: Callable[[list[int]], bool]) -> list[list[int]]:
    """Step allocations (smallest count first) on the budget's edge: for each number k of steps given to the
    smallest count, the most steps the largest can take with ``fits`` still true (the rest to the second
    largest). Cost rises with every step moved to a larger count, so nothing inside the edge can be better."""
    out: list[list[int]] = []
    for k in range(total + 1):
        best = None
        for k_large in range(total - k + 1):
            alloc = [0] * m
            alloc[0] += k
            alloc[-1] += k_large
            alloc[-2 if m > 2 else 0] += total - k - k_large
            if fits(alloc):
                best = alloc
            else:
                break  # more steps to the largest count only cost more
        if best is not None and best not in out:
            out.append(best)
    return out
