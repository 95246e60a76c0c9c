"""The search: fixed schedules on the budget's edge, static and adaptive schedules, optionally over step counts
and methods too (:func:`step_grid`); the best that fits (:func:`tune`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ..core.schedule import AdaptiveSchedule, FixedSchedule
from ..core.schedule_text import parse_schedule
from ..core.settings import SamplingSettings
from .budget import Budget, TuneError
from .cost import CostModel, allocation_schedule, edge_allocations
from .results import Candidate, TuneResult, _rank_agreement, quality_key
from .trials import Trials

#: Adaptive ratio pairs judged besides the fixed schedules (a diagonal of the reference's sweep).
ADAPTIVE_RATIOS = ((1.0, 0.9), (0.9, 0.7), (0.7, 0.5), (0.5, 0.3))


def tune(
    pipe,
    sampling: SamplingSettings,
    budget: Budget,
    *,
    metric: str = "trajectory",
    images: int = 100,
    seed: int = 0,
    batch: int = 100,
    adaptive: bool = True,
    search: list[tuple[str, int]] | None = None,
    on_candidate: Callable[[Candidate], None] | None = None,
) -> TuneResult:
    """The best schedule of ``pipe``'s counts within ``budget`` under ``metric``; see the module docstring.

    ``search``: (method, steps) pairs to search together with the schedule (:func:`step_grid`); a fraction
    budget is then a fraction of the recommended settings' cost (``sampling`` as given). None: the schedule at
    ``sampling``'s steps only, a fraction budget of the largest static schedule's cost there.
    """
    t_start = time.perf_counter()
    if search is not None and not search:  # "search nothing" would silently become "no step search"
        raise TuneError(
            "search lists no (method, steps) pair: give some (step_grid makes them), or None to tune "
            "the schedule at the given steps only"
        )
    counts = sorted(pipe.counts)
    if len(counts) < 2:
        raise TuneError(
            f"the bundle has one mediator count ({counts[0]}): there is no schedule to tune. Build "
            f"several counts (e.g. --mediators 16,32,64) to trade quality for cost"
        )
    cfg_scale = sampling.resolved_cfg_scale
    base = SamplingSettings(sampler=sampling.sampler, method=sampling.method, steps=sampling.steps).resolved()
    settings_of = {}  # (method, steps) -> resolved settings of the sampler
    for method, steps in search or [(base.method, base.steps)]:
        settings_of[(method, steps)] = SamplingSettings(sampler=base.sampler, method=method, steps=steps).resolved()
    models = {k: CostModel(pipe, s, cfg_scale) for k, s in settings_of.items()}  # each checks its sampler
    # most evaluations first: the trajectory reference is the largest count at the most accurate setting
    order = sorted(settings_of, key=lambda k: -len(models[k].steps))
    trials = Trials(pipe, sampling, metric=metric, images=images, seed=seed, batch=batch)
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
        budget = budget.against(
            reference, f"the recommended settings' GFLOPs ({rec_schedule}, {base.method} {base.steps} steps)"
        )
    evaluated: dict[tuple, Candidate] = {}

    def evaluate(key: tuple, text: str, kind: str) -> Candidate:
        method, steps = key
        if (method, steps, text) in evaluated:
            return evaluated[(method, steps, text)]
        cost = models[key]
        sched = parse_schedule(text)
        kind = "static" if isinstance(sched, FixedSchedule) and len(sched.counts) == 1 else kind
        samples, ms, gflops, per_count = trials.run(text, sampling.override(method=method, steps=steps))
        if kind == "static":  # per-image ms of one evaluation of this count, for --budget-ms predictions
            cost.ms_per_eval[int(text)] = ms / max(1, len(cost.steps))
        c = Candidate(
            text,
            kind,
            gflops if sched.adaptive else cost.gflops_per_image(sched),
            predicted_ms=None if sched.adaptive else cost.ms_per_image(sched),
            measured_ms=ms,
            measured_gflops=gflops,
            steps_per_count=per_count,
            steps=steps if search is not None else None,
            method=method if search is not None else None,
        )
        trials.score(c, samples)
        evaluated[(method, steps, text)] = c
        if on_candidate:
            on_candidate(c)
        return c

    trials.warm_up()
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
        floor = min(
            budget.price(cost.cost(FixedSchedule.static(n)))
            if budget.kind != "ms"
            else budget.price(evaluated[(*key, str(n))].cost)
            for n in counts
        )
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
        coarse = candidates[:: math.ceil(len(candidates) / most)] if len(candidates) > most else candidates
        scored = [(alloc, evaluate(key, allocation_schedule(counts, alloc, E), "fixed")) for alloc in coarse]
        if len(candidates) > len(coarse) and scored:  # then the neighbours of the best
            i = candidates.index(max(scored, key=lambda ac: quality_key(ac[1], metric))[0])
            for alloc in candidates[max(0, i - reach) : i + reach + 1]:
                evaluate(key, allocation_schedule(counts, alloc, E), "fixed")
        # the paper's rule switches between 2 or 3 counts; with a step search, at the recommended steps only
        if adaptive and len(counts) <= 3 and (search is None or key == (base.method, base.steps)):
            for ratios in ADAPTIVE_RATIOS:
                evaluate(key, str(AdaptiveSchedule(counts, ratios[: len(counts) - 1])), "adaptive")

    fits = [c for c in evaluated.values() if budget.fits(c.cost)]
    if not fits:
        floor, what = cheapest
        unit = budget.unit
        price = (
            f"{floor:.1%} of {budget.reference}"
            if budget.kind == "fraction"
            else f"{floor:.4g}{unit} ({floor / reference:.1%} of the reference's GFLOPs)"
            if budget.kind == "gflops"
            else f"{floor:.4g}{unit}"
        )
        combos = "(schedule x steps) combination" if search is not None else "schedule"
        raise TuneError(
            f"the budget ({budget.describe()}) is below the cheapest {combos}: {what} cost {price}, "
            f"so no schedule fits"
            + (" (the counts of this model differ little in cost)" if search is None else "")
            + f". Raise the budget to at least {floor:.4g}"
            + ("" if budget.kind == "fraction" else unit)
            + (", or search fewer steps (--search-steps)" if search is not None else "")
        )
    best = max(fits, key=lambda c: (quality_key(c, metric), -c.gflops))
    return TuneResult(
        budget,
        metric,
        best,
        sorted(evaluated.values(), key=lambda c: c.gflops),
        len(trials.labels),
        time.perf_counter() - t_start,
        _rank_agreement(list(evaluated.values())),
        reference,
        {
            **sampling.to_dict(),
            "seed": seed,
            "batch": batch,
            "evaluations": len(models[(best.method, best.steps)].steps)
            if search is not None
            else len(models[order[0]].steps),
        },
        steps_searched=[list(k) for k in order] if search is not None else None,
    )


def step_grid(
    sampling: SamplingSettings, steps: list[int] | None = None, methods: list[str] | None = None
) -> list[tuple[str, int]]:
    """The (method, steps) pairs a step search judges: ``steps`` (default: 40% to 100% of the recommended
    steps, six values) for each of ``methods`` (default: the recommended fixed-step method, plus Heun beside
    Euler, whose two evaluations per step may buy more than two Euler steps)."""
    from ..core.samplers import fixed_methods
    from ..core.settings import MAX_STEPS

    base = sampling.resolved()
    fixed = list(fixed_methods(base.sampler))
    if methods is not None and not methods:  # an empty list would search no (method, steps) pair at all
        raise TuneError(
            f"--search-methods names no method: give at least one of the {base.sampler} sampler's "
            f"({', '.join(fixed)}), or leave it out for the default"
        )
    if methods is None:  # an adaptive method (the ODE's default, dopri5) chooses its own steps: then Euler and Heun
        adaptive = base.method not in fixed
        methods = (["euler"] if adaptive else [base.method]) + (
            ["heun"] if (adaptive or base.method == "euler") and "heun" in fixed else []
        )
    bad = [m for m in methods if m not in fixed]
    if bad:
        raise TuneError(
            f"a step search needs fixed-step methods; {', '.join(bad)} is not one of the {base.sampler} "
            f"sampler's ({', '.join(fixed)})"
        )
    if steps is None:
        steps = sorted({max(3, round(base.steps * f)) for f in (0.4, 0.5, 0.6, 0.7, 0.85, 1.0)})
    bad_steps = [k for k in steps if not (isinstance(k, int) and 2 <= k <= MAX_STEPS)]
    if bad_steps or not steps:
        raise TuneError(
            f"--search-steps takes step counts in 2..{MAX_STEPS} (grid points, as --steps counts them), "
            f"got {bad_steps or 'none'}"
        )
    return [(m, k) for m in methods for k in sorted(set(steps))]
