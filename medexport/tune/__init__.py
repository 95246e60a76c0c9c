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


Modules: :mod:`.budget` (what may be spent), :mod:`.cost` (exact costs before running), :mod:`.trials` (running
and scoring one candidate), :mod:`.results` (candidates, the result, the frontier), :mod:`.search` (the search).
"""

from .budget import Budget, Cost, TuneError, check_budget_args
from .cost import CostModel, allocation_schedule, edge_allocations, evaluation_steps
from .results import METRICS, Candidate, TuneResult, quality_key
from .search import ADAPTIVE_RATIOS, step_grid, tune

__all__ = [
    "ADAPTIVE_RATIOS",
    "METRICS",
    "Budget",
    "Candidate",
    "Cost",
    "CostModel",
    "TuneError",
    "TuneResult",
    "allocation_schedule",
    "check_budget_args",
    "edge_allocations",
    "evaluation_steps",
    "quality_key",
    "step_grid",
    "tune",
]
