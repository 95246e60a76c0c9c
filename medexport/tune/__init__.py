"""``medexport tune``: the best mediator schedule for an inference budget.

A fixed schedule over E model evaluations is an allocation of the steps to the bundle's counts, few mediators
first (the paper's order). Its cost is exact before anything runs: the sampler is dry-run (no model) to list
which step each evaluation belongs to, the schedule gives each step its count, and each count's GFLOPs per
forward (``forward_flops``) or its measured milliseconds per evaluation on this machine add up. Cost rises
monotonically as steps move to larger counts, so the schedules worth judging are those on the budget's edge:
for each number of steps given to the smallest count, the most steps the largest count can take within the
budget. The search judges a coarse set of those, then the neighbours of the best, plus every static schedule
(for the frontier) and a few adaptive ratio pairs (whose cost is measured, not predicted).

Quality is either ``judge`` (the shipped Fashion-MNIST classifier: accuracy, then FD) or ``trajectory``: the RMS
distance of a schedule's final samples from those of the largest count's static schedule on the same noise and
labels, a proxy that needs no data and applies to any model. Every candidate sees the same labels and seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core.arrays import NUMPY
from ..core.samplers import sample
from ..core.schedule import AdaptiveSchedule, FixedSchedule
from ..core.schedule_text import parse_schedule
from ..core.settings import SamplingSettings
from ..core.steps import StepInfo
from ..errors import ConfigError
from ..model import forward_flops

METRICS = ("judge", "trajectory")
#: Adaptive ratio pairs judged besides the fixed schedules (a diagonal of the reference's sweep).
ADAPTIVE_RATIOS = ((1.0, 0.9), (0.9, 0.7), (0.7, 0.5), (0.5, 0.3))


class TuneError(ConfigError):
    """A tune that cannot be done as asked (budget, bundle, metric)."""


@dataclass(frozen=True)
class Cost:
    """What one image costs under a schedule: GFLOPs (exact for fixed schedules) and ms where known."""

    gflops: float
    ms: float | None = None


@dataclass(frozen=True)
class Budget:
    """At most ``value`` of ``kind``: "gflops" per image, "ms" per image (measured here), or "fraction" of a
    reference's GFLOPs: the largest static schedule at the given steps, or, when the steps are searched too, the
    recommended settings. Every candidate is priced here (:meth:`price`, :meth:`fits`)."""

    kind: str
    value: float
    #: GFLOPs per image of the reference: what a "fraction" budget is a fraction of.
    largest_gflops: float | None = None
    reference: str = "the largest static schedule's GFLOPs"

    def __post_init__(self) -> None:
        if self.kind not in ("gflops", "ms", "fraction"):
            raise TuneError(f"unknown budget kind {self.kind!r}")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise TuneError(f"the budget must be a positive number, got {self.value!r}")

    def describe(self) -> str:
        return {"gflops": f"{self.value:g} GFLOPs / image", "ms": f"{self.value:g} ms / image",
                "fraction": f"{100 * self.value:g}% of {self.reference}"}[self.kind]

    @property
    def unit(self) -> str:
        return {"gflops": " GFLOPs / image", "ms": " ms / image", "fraction": ""}[self.kind]

    def against(self, largest_gflops: float, reference: str | None = None) -> Budget:
        return Budget(self.kind, self.value, largest_gflops, reference or self.reference)

    def price(self, cost: Cost) -> float | None:
        """The cost in this budget's unit (None: an ms budget and a cost not timed yet)."""
        if self.kind == "ms":
            return cost.ms
        if self.kind == "fraction":
            if self.largest_gflops is None:
                raise TuneError("a fraction budget is priced against a reference's GFLOPs: call against()")
            return cost.gflops / self.largest_gflops
        return cost.gflops

    def fits(self, cost: Cost) -> bool:
        price = self.price(cost)
        return price is not None and price <= self.value * (1 + 1e-9)


@dataclass
class Candidate:
    schedule: str
    kind: str  # "static" | "fixed" | "adaptive"
    gflops: float  # per image: predicted for fixed schedules, measured for adaptive ones
    predicted_ms: float | None = None
    measured_ms: float | None = None
    measured_gflops: float | None = None
    accuracy: float | None = None
    fd: float | None = None
    trajectory: float | None = None  # RMS distance from the largest static schedule's samples
    steps_per_count: dict = field(default_factory=dict)
    steps: int | None = None  # the sampler's steps (grid points, as --steps counts them) and method it ran with
    method: str | None = None

    @property
    def key(self) -> tuple:
        return (self.method, self.steps, self.schedule)

    def describe(self) -> str:
        return f"{self.schedule} @ {self.method} {self.steps}" if self.steps is not None else self.schedule

    @property
    def cost(self) -> Cost:
        return Cost(self.gflops, self.measured_ms)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps_per_count"] = {str(k): v for k, v in self.steps_per_count.items()}
        return d


@dataclass
class TuneResult:
    budget: Budget
    metric: str
    best: Candidate
    candidates: list[Candidate]
    images: int
    seconds: float
    rank_agreement: float | None  # Spearman between the trajectory proxy and the judge, where both were measured
    reference_gflops: float  # what a fraction budget is priced against (budget.reference says what)
    settings: dict
    steps_searched: list | None = None  # [(method, steps), ...] when the steps were searched

    def frontier(self) -> list[Candidate]:
        """Candidates no other beats on both cost and quality, cheapest first."""
        def better(a: Candidate, b: Candidate) -> bool:
            return (a.gflops <= b.gflops and quality_key(a, self.metric) >= quality_key(b, self.metric)
                    and (a.gflops < b.gflops or quality_key(a, self.metric) > quality_key(b, self.metric)))
        front = [c for c in self.candidates if not any(better(o, c) for o in self.candidates)]
        return sorted(front, key=lambda c: c.gflops)

    def to_dict(self) -> dict:
        return {"schedule": self.best.schedule, "steps": self.best.steps, "method": self.best.method,
                "steps_searched": self.steps_searched,
                "gflops_per_image": self.best.measured_gflops or self.best.gflops,
                "quality": _quality_dict(self.best, self.metric), "metric": self.metric,
                "budget": {"kind": self.budget.kind, "value": self.budget.value, "text": self.budget.describe()},
                "best": self.best.to_dict(), "frontier": [c.to_dict() for c in self.frontier()],
                "candidates": [c.to_dict() for c in self.candidates], "images_per_candidate": self.images,
                "seconds": round(self.seconds, 1), "rank_agreement_trajectory_vs_judge": self.rank_agreement,
                "reference_gflops": self.reference_gflops, "reference": self.budget.reference,
                "settings": self.settings}


def _quality_dict(c: Candidate, metric: str) -> dict:
    if metric == "judge":
        return {"accuracy": c.accuracy, "fd": c.fd, "trajectory": c.trajectory}
    return {"trajectory": c.trajectory}


def quality_key(c: Candidate, metric: str) -> tuple:
    """Larger is better: judge accuracy (FD breaks ties), or the negated trajectory distance."""
    if metric == "judge":
        return (c.accuracy if c.accuracy is not None else -1.0, -(c.fd if c.fd is not None else math.inf))
    return (-(c.trajectory if c.trajectory is not None else math.inf),)


# ---------------------------------------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------------------------------------
def evaluation_steps(settings: SamplingSettings) -> list[StepInfo]:
    """The StepInfo of every model evaluation a run makes, by dry-running the sampler with no model."""
    if settings.num_model_steps is None:
        raise TuneError("tuning needs a fixed-step sampler: dopri5 chooses its own steps. Use --method euler or "
                        "heun")
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
        scale = 10 ** digits
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


# ---------------------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------------------
class Judge:
    """Runs a schedule on the tune's fixed labels and seeds and scores it."""

    def __init__(self, pipe, sampling: SamplingSettings, *, metric: str, images: int, seed: int, batch: int):
        if metric not in METRICS:
            raise TuneError(f"unknown metric {metric!r}: choose {' or '.join(METRICS)}")
        self.pipe, self.sampling, self.metric, self.seed, self.batch = pipe, sampling, metric, seed, batch
        if metric == "judge":
            from ..judge.evaluate import check_applies

            check_applies(pipe)
        classes = pipe.config.num_classes
        self.labels = [i % classes for i in range(images)]
        self.judge_applies = metric == "judge"
        self.reference: torch.Tensor | None = None

    def warm_up(self) -> None:
        """Open and run every engine at the batch the runs use, so that no schedule's time includes a
        session's start."""
        from ..core.request import SampleRequest

        self.pipe.warmup(SampleRequest(self.labels[:self.batch], settings=self.sampling))

    def run(self, schedule: str, sampling: SamplingSettings | None = None) -> tuple[torch.Tensor, float, float, dict]:
        """(final samples, ms per image, measured GFLOPs per image, steps per count) of ``schedule`` under
        ``sampling`` (default: the tune's settings)."""
        from ..runtime.pipeline import sample_in_batches

        run = sample_in_batches(self.pipe, self.labels, (sampling or self.sampling).override(schedule=schedule),
                                seed=self.seed, batch=self.batch)
        return (run.latents, 1e3 * run.seconds / len(self.labels), run.flops_per_image / 1e9,
                run.steps_per_count)

    def score(self, c: Candidate, samples: torch.Tensor) -> None:
        """Judge ``samples``; the first samples scored (the largest static schedule's) are the trajectory
        reference."""
        if self.reference is None:
            self.reference = samples
        c.trajectory = float(((samples - self.reference) ** 2).mean().sqrt())
        if self.judge_applies:
            from ..judge import score

            s = score(samples, self.labels)
            c.accuracy, c.fd = s.accuracy, s.fd


# ---------------------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------------------
def tune(pipe, sampling: SamplingSettings, budget: Budget, *, metric: str = "trajectory", images: int = 100,
         seed: int = 0, batch: int = 100, adaptive: bool = True, search: list[tuple[str, int]] | None = None,
         on_candidate: Callable[[Candidate], None] | None = None) -> TuneResult:
    """The best schedule of ``pipe``'s counts within ``budget`` under ``metric``; see the module docstring.

    ``search``: (method, steps) pairs to search together with the schedule (:func:`step_grid`); a fraction
    budget is then a fraction of the recommended settings' cost (``sampling`` as given). None: the schedule at
    ``sampling``'s steps only, a fraction budget of the largest static schedule's cost there.
    """
    t_start = time.perf_counter()
    if search is not None and not search:  # "search nothing" would silently become "no step search"
        raise TuneError("search lists no (method, steps) pair: give some (step_grid makes them), or None to tune "
                        "the schedule at the given steps only")
    counts = sorted(pipe.counts)
    if len(counts) < 2:
        raise TuneError(f"the bundle has one mediator count ({counts[0]}): there is no schedule to tune. Build "
                        f"several counts (e.g. --mediators 16,32,64) to trade quality for cost")
    cfg_scale = sampling.resolved_cfg_scale
    base = SamplingSettings(sampler=sampling.sampler, method=sampling.method, steps=sampling.steps).resolved()
    settings_of = {}  # (method, steps) -> resolved settings of the sampler
    for method, steps in (search or [(base.method, base.steps)]):
        settings_of[(method, steps)] = SamplingSettings(sampler=base.sampler, method=method, steps=steps).resolved()
    models = {k: CostModel(pipe, s, cfg_scale) for k, s in settings_of.items()}  # each checks its sampler
    # most evaluations first: the trajectory reference is the largest count at the most accurate setting
    order = sorted(settings_of, key=lambda k: -len(models[k].steps))
    judge = Judge(pipe, sampling, metric=metric, images=images, seed=seed, batch=batch)
    largest = counts[-1]
    if search is None:
        reference = models[order[0]].gflops_per_image(FixedSchedule.static(largest))
        budget = budget.against(reference)
    else:  # (a recommended dopri5 has no fixed cost: the first searched method at the recommended steps)
        if base.num_model_steps is None:
            base = SamplingSettings(sampler=base.sampler, method=search[0][0], steps=base.steps).resolved()
        rec = CostModel(pipe, base, cfg_scale)
        rec_schedule = parse_schedule(sampling.schedule) if sampling.schedule else FixedSchedule.static(largest)
        if rec_schedule.adaptive:
            rec_schedule = FixedSchedule.static(largest)
        reference = rec.gflops_per_image(rec_schedule)
        budget = budget.against(reference, f"the recommended settings' GFLOPs ({rec_schedule}, {base.method} "
                                           f"{base.steps} steps)")
    evaluated: dict[tuple, Candidate] = {}

    def evaluate(key: tuple, text: str, kind: str) -> Candidate:
        method, steps = key
        if (method, steps, text) in evaluated:
            return evaluated[(method, steps, text)]
        cost = models[key]
        sched = parse_schedule(text)
        kind = "static" if isinstance(sched, FixedSchedule) and len(sched.counts) == 1 else kind
        samples, ms, gflops, per_count = judge.run(text, sampling.override(method=method, steps=steps))
        if kind == "static":  # per-image ms of one evaluation of this count, for --budget-ms predictions
            cost.ms_per_eval[int(text)] = ms / max(1, len(cost.steps))
        c = Candidate(text, kind, gflops if sched.adaptive else cost.gflops_per_image(sched),
                      predicted_ms=None if sched.adaptive else cost.ms_per_image(sched), measured_ms=ms,
                      measured_gflops=gflops, steps_per_count=per_count,
                      steps=steps if search is not None else None, method=method if search is not None else None)
        judge.score(c, samples)
        evaluated[(method, steps, text)] = c
        if on_candidate:
            on_candidate(c)
        return c

    judge.warm_up()
    cheapest: tuple[float, str] | None = None
    for key in order:
        cost, E = models[key], models[key].num_steps
        # The largest count's static schedule first (the trajectory reference), then the other static schedules
        # (which also time each count). A GFLOPs budget prices them before they run: in a step search, static
        # schedules that cannot fit are not run (but the reference).
        first = not evaluated
        statics = []
        for n in [largest, *counts[:-1]]:
            if budget.kind == "ms" or search is None or first or budget.fits(cost.cost(FixedSchedule.static(n))):
                statics.append(evaluate(key, str(n), "static"))
            first = False
        floor = min(budget.price(cost.cost(FixedSchedule.static(n))) if budget.kind != "ms"
                    else budget.price(evaluated[(*key, str(n))].cost) for n in counts)
        where = f" at {key[0]} {key[1]} steps" if search is not None else ""
        if cheapest is None or floor < cheapest[0]:
            cheapest = (floor, f"the static {counts[0]} mediators{where}")
        if floor > budget.value * (1 + 1e-9):
            continue  # nothing at these steps fits

        def fits(alloc: list[int], cost=cost, E=E) -> bool:
            return budget.fits(cost.cost(parse_schedule(allocation_schedule(counts, alloc, E))))

        # Fixed schedules on the budget's edge: k steps to the smallest count, the most the largest can take.
        # A step search spreads its judging over many step counts, each coarser: 4 edge schedules and the
        # best one's nearest neighbours, against 6 and two on each side for one step count.
        most, reach = (4, 1) if search is not None else (6, 2)
        candidates = edge_allocations(len(counts), E, fits)
        coarse = (candidates[:: math.ceil(len(candidates) / most)] if len(candidates) > most else candidates)
        scored = [(alloc, evaluate(key, allocation_schedule(counts, alloc, E), "fixed")) for alloc in coarse]
        if len(candidates) > len(coarse) and scored:  # then the neighbours of the best
            i = candidates.index(max(scored, key=lambda ac: quality_key(ac[1], metric))[0])
            for alloc in candidates[max(0, i - reach):i + reach + 1]:
                evaluate(key, allocation_schedule(counts, alloc, E), "fixed")
        # the paper's rule switches between 2 or 3 counts; with a step search, at the recommended steps only
        if adaptive and len(counts) <= 3 and (search is None or key == (base.method, base.steps)):
            for ratios in ADAPTIVE_RATIOS:
                evaluate(key, str(AdaptiveSchedule(counts, ratios[: len(counts) - 1])), "adaptive")

    fits = [c for c in evaluated.values() if budget.fits(c.cost)]
    if not fits:
        floor, what = cheapest
        unit = budget.unit
        price = (f"{floor:.1%} of {budget.reference}" if budget.kind == "fraction"
                 else f"{floor:.4g}{unit} ({floor / reference:.1%} of the reference's GFLOPs)"
                 if budget.kind == "gflops" else f"{floor:.4g}{unit}")
        combos = "(schedule x steps) combination" if search is not None else "schedule"
        raise TuneError(f"the budget ({budget.describe()}) is below the cheapest {combos}: {what} cost {price}, "
                        f"so no schedule fits" + (" (the counts of this model differ little in cost)"
                                                  if search is None else "")
                        + f". Raise the budget to at least {floor:.4g}" + ("" if budget.kind == "fraction" else unit)
                        + (", or search fewer steps (--search-steps)" if search is not None else ""))
    best = max(fits, key=lambda c: (quality_key(c, metric), -c.gflops))
    return TuneResult(budget, metric, best, sorted(evaluated.values(), key=lambda c: c.gflops), len(judge.labels),
                      time.perf_counter() - t_start, _rank_agreement(list(evaluated.values())), reference,
                      {**sampling.to_dict(), "seed": seed, "batch": batch,
                       "evaluations": len(models[(best.method, best.steps)].steps) if search is not None
                       else len(models[order[0]].steps)},
                      steps_searched=[list(k) for k in order] if search is not None else None)


def step_grid(sampling: SamplingSettings, steps: list[int] | None = None, methods: list[str] | None = None
              ) -> list[tuple[str, int]]:
    """The (method, steps) pairs a step search judges: ``steps`` (default: 40% to 100% of the recommended
    steps, six values) for each of ``methods`` (default: the recommended fixed-step method, plus Heun beside
    Euler, whose two evaluations per step may buy more than two Euler steps)."""
    from ..core.settings import MAX_STEPS, METHODS

    base = sampling.resolved()
    fixed = [m for m in METHODS[base.sampler] if m != "dopri5"]
    if methods is not None and not methods:  # an empty list would search no (method, steps) pair at all
        raise TuneError(f"--search-methods names no method: give at least one of the {base.sampler} sampler's "
                        f"({', '.join(fixed)}), or leave it out for the default")
    if methods is None:  # dopri5 (the ODE's default) chooses its own steps: then Euler and Heun
        methods = ([base.method] if base.method in fixed else ["euler"]) + (
            ["heun"] if base.method in ("euler", "dopri5") and "heun" in fixed else [])
    bad = [m for m in methods if m not in fixed]
    if bad:
        raise TuneError(f"a step search needs fixed-step methods; {', '.join(bad)} is not one of the {base.sampler} "
                        f"sampler's ({', '.join(fixed)})")
    if steps is None:
        steps = sorted({max(3, round(base.steps * f)) for f in (0.4, 0.5, 0.6, 0.7, 0.85, 1.0)})
    bad_steps = [k for k in steps if not (isinstance(k, int) and 2 <= k <= MAX_STEPS)]
    if bad_steps or not steps:
        raise TuneError(f"--search-steps takes step counts in 2..{MAX_STEPS} (grid points, as --steps counts them), "
                        f"got {bad_steps or 'none'}")
    return [(m, k) for m in methods for k in sorted(set(steps))]


def _rank_agreement(cands: list[Candidate]) -> float | None:
    """Spearman correlation between the trajectory distance and the judge's FD over the candidates (both lower
    is better), where both were measured; None otherwise."""
    pairs = [(c.trajectory, c.fd) for c in cands if c.trajectory is not None and c.fd is not None]
    if len(pairs) < 3:
        return None

    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        r = [0.0] * len(values)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    a, b = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    n = len(pairs)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    var = math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    return cov / var if var else None


def check_budget_args(gflops: float | None, ms: float | None, fraction: float | None) -> Budget:
    given = [(k, v) for k, v in (("gflops", gflops), ("ms", ms), ("fraction", fraction)) if v is not None]
    if len(given) != 1:
        raise TuneError("give exactly one budget: --budget-gflops G, --budget-ms M or --budget-fraction F")
    kind, value = given[0]
    if kind == "fraction" and not 0 < value <= 1:
        raise TuneError(f"--budget-fraction is a share in (0, 1] of a reference cost (the recommended settings' "
                        f"GFLOPs when the steps are searched, the largest static schedule's with --steps), got {value}")
    if kind != "fraction" and not value > 0:
        raise TuneError(f"--budget-{kind} must be positive, got {value}")
    return Budget(kind, float(value))


__all__ = ["ADAPTIVE_RATIOS", "METRICS", "Budget", "Candidate", "Cost", "CostModel", "TuneError", "TuneResult",
           "allocation_schedule", "check_budget_args", "edge_allocations", "evaluation_steps", "quality_key",
           "step_grid", "tune"]
