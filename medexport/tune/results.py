"""What a tune found: each judged :class:`Candidate` (schedule, cost, quality), the :class:`TuneResult` and
its frontier, and how quality is compared (:func:`quality_key`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .budget import Budget, Cost

#: How a candidate's quality is measured (see the package docstring).
METRICS = ("judge", "trajectory")


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
            return (
                a.gflops <= b.gflops
                and quality_key(a, self.metric) >= quality_key(b, self.metric)
                and (a.gflops < b.gflops or quality_key(a, self.metric) > quality_key(b, self.metric))
            )

        front = [c for c in self.candidates if not any(better(o, c) for o in self.candidates)]
        return sorted(front, key=lambda c: c.gflops)

    def to_dict(self) -> dict:
        return {
            "schedule": self.best.schedule,
            "steps": self.best.steps,
            "method": self.best.method,
            "steps_searched": self.steps_searched,
            "gflops_per_image": self.best.measured_gflops or self.best.gflops,
            "quality": _quality_dict(self.best, self.metric),
            "metric": self.metric,
            "budget": {"kind": self.budget.kind, "value": self.budget.value, "text": self.budget.describe()},
            "best": self.best.to_dict(),
            "frontier": [c.to_dict() for c in self.frontier()],
            "candidates": [c.to_dict() for c in self.candidates],
            "images_per_candidate": self.images,
            "seconds": round(self.seconds, 1),
            "rank_agreement_trajectory_vs_judge": self.rank_agreement,
            "reference_gflops": self.reference_gflops,
            "reference": self.budget.reference,
            "settings": self.settings,
        }


def _quality_dict(c: Candidate, metric: str) -> dict:
    if metric == "judge":
        return {"accuracy": c.accuracy, "fd": c.fd, "trajectory": c.trajectory}
    return {"trajectory": c.trajectory}


def quality_key(c: Candidate, metric: str) -> tuple:
    """Larger is better: judge accuracy (FD breaks ties), or the negated trajectory distance."""
    if metric == "judge":
        return (c.accuracy if c.accuracy is not None else -1.0, -(c.fd if c.fd is not None else math.inf))
    return (-(c.trajectory if c.trajectory is not None else math.inf),)


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
