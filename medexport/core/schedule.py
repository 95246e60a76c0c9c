"""Which mediator count serves which sampling step.

The paper trains one model per mediator count (the attention biases' shapes depend on it) and switches between
them during sampling: few mediators in the early, coarse steps, more later for detail. The schedule is a
property of the runtime, not of the engines: the same engines serve any schedule. Two kinds:

- :class:`FixedSchedule`, e.g. ``"16:0.3,32:0.7,64"``: the 16-mediator model for the first 30% of the steps,
  32 up to 70%, 64 to the end; ``"64"`` alone is a static schedule. Deterministic, no host synchronisation.
- :class:`AdaptiveSchedule`, e.g. ``"adaptive:16,32,64:warmup=3:ratios=0.5,0.2"``: the reference's method,
  which switches m1 -> m2 -> m3 once the state changes little compared with the warm-up steps.

A sampling loop uses either the same way::

    schedule.validate_against(bundle_counts)     # before any work
    schedule.reset(x0, xp)                       # xp: the array adapter (medexport.core.arrays)
    velocity = lambda x, t, step: engines[schedule.model_for(step)](x, t, y)
    on_step = schedule.observe                   # (step, x_after)

:func:`medexport.core.schedule_text.parse_schedule` reads both text forms; ``str(schedule)`` writes them back.
Nothing here imports torch: an adaptive schedule measures its distances through the run's array adapter.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import ScheduleError
from .arrays import Arrays, adapter_of
from .config import FULL
from .steps import StepInfo

DISTANCES = ("mae", "mse")
ADAPTIVE_PREFIX = "adaptive"


class Schedule(abc.ABC):
    """What every schedule offers; :meth:`reset` and :meth:`observe` do nothing unless it is adaptive."""

    #: Whether the schedule decides from the states it observes (it then needs a fixed-step sampler).
    adaptive: bool = False
    #: Whether it decides per sample (:meth:`AdaptiveSchedule.models_for`) instead of per batch.
    per_sample: bool = False

    @property
    @abc.abstractmethod
    def counts(self) -> tuple[int, ...]:
        """Every mediator count the schedule may use, in the order it uses them."""
        raise NotImplementedError

    @abc.abstractmethod
    def model_for(self, step: StepInfo) -> int:
        """The mediator count that serves ``step``."""
        raise NotImplementedError

    def reset(self, x0, xp: Arrays | None = None) -> None:
        """Start a run from the state ``x0``, an array of the adapter ``xp`` (None: the adapter of its type)."""

    def observe(self, step: StepInfo, x_after) -> None:
        """Take note of the state after ``step`` (an ``on_step`` callback for the sampler)."""

    def validate_against(self, available: Iterable[int]) -> None:
        """Raise ScheduleError, naming what is missing, if a count of the schedule has no model in ``available``."""
        have = sorted(set(available))
        missing = [c for c in self.counts if c not in have]
        if missing and have == [FULL]:
            raise ScheduleError(
                f"the schedule {str(self)!r} uses mediator count(s) {', '.join(map(str, missing))}, but this is a "
                f"vanilla (full-attention) bundle: it runs its one model, with no --schedule. Sample the mediator "
                f"bundle for a schedule"
            )
        if missing:
            raise ScheduleError(
                f"the schedule {str(self)!r} uses mediator count(s) {', '.join(map(str, missing))}, which the "
                f"bundle lacks; it has {', '.join(map(str, have)) or 'none'}. Build engines for the missing "
                "count(s) or use a schedule with only the counts the bundle has."
            )


# ---------------------------------------------------------------------------------------------------------
# Fixed schedules


def _check_counts(counts: tuple, hint: str = "") -> None:
    """Mediator counts of a schedule: positive integers, each once; or 0 alone, the one full-attention model of a
    vanilla twin (which never mixes with mediator counts: they are other models)."""
    for i, c in enumerate(counts):
        if c == 0 and not isinstance(c, bool) and len(counts) == 1:
            continue
        if c == 0 and not isinstance(c, bool):
            raise ScheduleError(
                "0 is the full-attention model of a vanilla twin, which is another model than the "
                "mediator counts: it cannot share a schedule with them",
                item=i,
                part="count",
            )
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise ScheduleError(f"mediator counts must be positive integers, got {c!r}", item=i, part="count")
        if c in counts[:i]:
            raise ScheduleError(f"mediator count {c} appears twice{hint}", item=i, part="count")


@dataclass(frozen=True)
class FixedSchedule(Schedule):
    """Mediator counts by fraction of the steps: ``"16:0.3,32:0.7,64"``, or one count (static).

    Step ``i`` of ``n`` (progress p = i / n) is served by the first segment whose boundary b satisfies
    p < b; the last segment, which has no boundary, serves whatever remains. With 250 steps the example
    gives 16 mediators to steps 0-74, 32 to 75-174, 64 to 175-249. The comparison is exact (fractions of
    integers against the decimal written), so a boundary that falls on a step boundary is never off by one.
    When the number of steps is unknown (dopri5's evaluations), p is the time t of the evaluation, compared
    as a float.

    Attributes:
        segment_counts: the mediator count of each segment, in order; distinct positive integers.
        boundaries: where each segment but the last ends, as a fraction of the steps; strictly increasing in
            (0, 1), one fewer than the counts.
    """

    segment_counts: tuple[int, ...]
    boundaries: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        counts, bounds = tuple(self.segment_counts), tuple(self.boundaries)
        object.__setattr__(self, "segment_counts", counts)
        object.__setattr__(self, "boundaries", bounds)
        if not counts:
            raise ScheduleError("a fixed schedule needs at least one mediator count, e.g. '64'")
        _check_counts(counts, hint="; merge its segments")
        if len(bounds) != len(counts) - 1:
            raise ScheduleError(
                f"{len(counts)} segment(s) need {len(counts) - 1} boundary fraction(s), got {len(bounds)}: every "
                "segment but the last ends at a fraction, the last runs to the end"
            )
        previous = 0.0
        for i, b in enumerate(bounds):
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or not 0 < b < 1:
                raise ScheduleError(f"the fraction {b!r} is not in (0, 1)", item=i, part="fraction")
            if b <= previous:
                raise ScheduleError(
                    f"the fraction {b!r} does not come after the previous one ({previous!r}); fractions must increase",
                    item=i,
                    part="fraction",
                )
            previous = b

    @classmethod
    def static(cls, count: int) -> FixedSchedule:
        """One mediator count for every step."""
        return cls((count,))

    @property
    def counts(self) -> tuple[int, ...]:
        return self.segment_counts

    def model_for(self, step: StepInfo) -> int:
        for count, b in zip(self.segment_counts, self.boundaries):
            if step.num_steps:  # exact: i / n against the decimal as written, not its binary approximation
                before = Fraction(step.index, step.num_steps) < Fraction(repr(float(b)))
            else:
                before = step.progress < b
            if before:
                return count
        return self.segment_counts[-1]

    def steps_per_count(self, num_steps: int) -> dict[int, int]:
        """How many of ``num_steps`` steps each count serves, e.g. {16: 75, 32: 100, 64: 75} for 250."""
        served = dict.fromkeys(self.segment_counts, 0)
        for i in range(num_steps):
            served[self.model_for(StepInfo(i, num_steps, 0.0, i / num_steps))] += 1
        return served

    def __str__(self) -> str:
        parts = [f"{c}:{float(b)!r}" for c, b in zip(self.segment_counts, self.boundaries)]
        return ",".join([*parts, str(self.segment_counts[-1])])


# ---------------------------------------------------------------------------------------------------------
# Adaptive schedules


@dataclass(frozen=True)
class Switch:
    """One change of model: after step ``after_step`` (so from step after_step + 1 on)."""

    after_step: int
    from_count: int
    to_count: int
    sample: int | None = None  # the sample, in per-sample mode


class AdaptiveSchedule(Schedule):
    """The reference's adaptive switch m1 -> m2 [-> m3], from how much the state still changes.

    After the update of step i (i = 0, 1, ...) let d_i = distance(x after step i, x after step i - 1), with x0
    before step 0. For 1 <= i <= K (K = ``warmup``): D0 += d_i / K. For i >= K + 1: if the current model is m1
    and d_i < r1 * D0, switch to m2; then, if the current model is m2 and d_i < r2 * D0, switch to m3 (both can
    happen after the same step). The model chosen after step i serves step i + 1 and everything after, the
    SDE's last step included. d_0 is measured but not used.

    The reference computes one distance over the whole state, so pass the full state (including a CFG
    doubling) to :meth:`reset` and :meth:`observe` to reproduce its decisions. With ``per_sample=True`` each
    sample (row of the state) keeps its own D0 and current model, and :meth:`models_for` gives one count per
    row; with CFG, pass only the conditional half and serve each row's pair with its count.

    The schedule holds state between :meth:`reset` and the end of a run, so one instance serves one run at a
    time. It needs a fixed-step sampler (sde, or ode euler/heun): dopri5's steps are not known in advance.

    Args:
        counts: the 2 or 3 mediator counts m1, m2[, m3], distinct, in the order they are used.
        ratios: r1[, r2], one fewer than the counts, each > 0, strictly decreasing (r1 > r2).
        warmup: K >= 1, the steps that define D0.
        distance: "mae" (mean absolute difference, the reference's choice) or "mse" (mean squared).
        per_sample: decide per sample instead of per batch.

    Text form (see :func:`parse_schedule`): ``adaptive:COUNTS:ratios=R1[,R2][:warmup=K][:distance=D][:per-sample]``
    with comma-separated counts and ratios and options in any order, e.g.
    ``adaptive:16,32,64:ratios=0.5,0.2:warmup=3:distance=mae``.
    """

    adaptive = True

    def __init__(
        self,
        counts: Sequence[int],
        ratios: Sequence[float],
        *,
        warmup: int = 3,
        distance: str = "mae",
        per_sample: bool = False,
    ):
        counts, ratios = tuple(counts), tuple(ratios)
        if not 2 <= len(counts) <= 3:
            raise ScheduleError(f"an adaptive schedule switches between 2 or 3 mediator counts, got {counts}")
        _check_counts(counts)
        if len(ratios) != len(counts) - 1:
            raise ScheduleError(
                f"{len(counts)} counts need {len(counts) - 1} ratio(s) (one per switch), got {len(ratios)}: {ratios}"
            )
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
                raise ScheduleError(f"ratios must be finite numbers > 0, got {r!r}")
        if len(ratios) == 2 and not ratios[0] > ratios[1]:
            raise ScheduleError(
                f"ratios must decrease (r1 > r2): the later switch waits for a calmer state; got {ratios}"
            )
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
            raise ScheduleError(f"warmup must be an integer >= 1 (the steps that define D0), got {warmup!r}")
        if distance not in DISTANCES:
            raise ScheduleError(f"unknown distance {distance!r}: choose one of {', '.join(DISTANCES)}")
        self._counts = counts
        self.ratios = tuple(float(r) for r in ratios)
        self.warmup = warmup
        self.distance = distance
        self.per_sample = bool(per_sample)
        self._prev = None  # the state after the last observed step; None until reset
        self._xp: Arrays | None = None
        #: d_i of each observed step: floats in batch mode, (B,) float64 arrays per sample.
        self.distances: list[np.ndarray | float] = []
        #: Every change of model in the current run, in order.
        self.switches: list[Switch] = []

    @property
    def counts(self) -> tuple[int, ...]:
        return self._counts

    def __str__(self) -> str:
        text = (
            f"{ADAPTIVE_PREFIX}:{','.join(map(str, self._counts))}"
            f":ratios={','.join(repr(r) for r in self.ratios)}:warmup={self.warmup}:distance={self.distance}"
        )
        return text + (":per-sample" if self.per_sample else "")

    def __repr__(self) -> str:
        return f"AdaptiveSchedule({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdaptiveSchedule) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    # -- a run ----------------------------------------------------------------------------------------------

    def reset(self, x0, xp: Arrays | None = None) -> None:
        """Start a run: x0 is the state before step 0; every sample starts on m1."""
        self._xp = xp if xp is not None else adapter_of(x0)
        self._prev = self._xp.copy(x0)
        rows = x0.shape[0] if self.per_sample else 1
        self._d0 = np.zeros(rows, dtype=np.float64)
        self._current = [0] * rows  # index into counts, per sample (or one for the batch)
        self._next_index = 0
        self.distances = []
        self.switches = []

    def _require_run(self, step: StepInfo) -> None:
        if self._prev is None:
            raise RuntimeError("AdaptiveSchedule.reset(x0) must be called before a run")
        if step.num_steps is None:
            raise ScheduleError(
                "an adaptive mediator schedule needs a fixed-step sampler (sde, or ode with euler or heun): "
                "dopri5 chooses its steps as it goes. Use a fixed schedule with dopri5."
            )

    def model_for(self, step: StepInfo) -> int:
        """The count serving ``step`` (batch mode); in per-sample mode use :meth:`models_for`."""
        self._require_run(step)
        if self.per_sample:
            raise RuntimeError("a per-sample AdaptiveSchedule decides per row: call models_for(step)")
        return self._counts[self._current[0]]

    def models_for(self, step: StepInfo) -> list[int]:
        """One count per row of the state (per-sample mode; in batch mode every row gets the batch's count)."""
        self._require_run(step)
        if not self.per_sample:
            return [self._counts[self._current[0]]] * self._prev.shape[0]
        return [self._counts[c] for c in self._current]

    def observe(self, step: StepInfo, x_after) -> None:
        """Measure d_i after step i and switch the model for the steps after it when the rule says so."""
        self._require_run(step)
        i = step.index
        if i != self._next_index:
            raise RuntimeError(f"AdaptiveSchedule.observe expected step {self._next_index}, got step {i}")
        if x_after.shape != self._prev.shape:
            raise ScheduleError(
                f"the schedule was reset with a state of shape {tuple(self._prev.shape)} but observes "
                f"{tuple(x_after.shape)}: pass the same (full or conditional-half) state to reset and observe"
            )
        d = self._xp.distance(x_after, self._prev, self.distance, self.per_sample)  # (B,) or (1,) float64
        self._prev = self._xp.copy(x_after)
        self._next_index += 1
        self.distances.append(d if self.per_sample else float(d[0]))
        k = self.warmup
        if 1 <= i <= k:
            self._d0 += d / k
        elif i >= k + 1:
            for row in range(len(self._current)):
                for stage, ratio in enumerate(self.ratios):  # stage 0: m1 -> m2, stage 1: m2 -> m3
                    if self._current[row] == stage and float(d[row]) < ratio * float(self._d0[row]):
                        self._current[row] = stage + 1
                        self.switches.append(
                            Switch(i, self._counts[stage], self._counts[stage + 1], row if self.per_sample else None)
                        )

    @property
    def d0(self) -> np.ndarray | float:
        """D0 so far: a float in batch mode, a (B,) float64 array per sample."""
        return self._d0.copy() if self.per_sample else float(self._d0[0])
