"""What a tune may spend: a :class:`Budget` (GFLOPs or ms per image, or a fraction of a reference) and the
:class:`Cost` it prices; :class:`TuneError`, the error of a tune that cannot be done as asked."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


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
        return {
            "gflops": f"{self.value:g} GFLOPs / image",
            "ms": f"{self.value:g} ms / image",
            "fraction": f"{100 * self.value:g}% of {self.reference}",
        }[self.kind]

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


def check_budget_args(gflops: float | None, ms: float | None, fraction: float | None) -> Budget:
    given = [(k, v) for k, v in (("gflops", gflops), ("ms", ms), ("fraction", fraction)) if v is not None]
    if len(given) != 1:
        raise TuneError("give exactly one budget: --budget-gflops G, --budget-ms M or --budget-fraction F")
    kind, value = given[0]
    if kind == "fraction" and not 0 < value <= 1:
        raise TuneError(
            f"--budget-fraction is a share in (0, 1] of a reference cost (the recommended settings' "
            f"GFLOPs when the steps are searched, the largest static schedule's with --steps), got {value}"
        )
    if kind != "fraction" and not value > 0:
        raise TuneError(f"--budget-{kind} must be positive, got {value}")
    return Budget(kind, float(value))
