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
    schedule.reset(x0)
    velocity = lambda x, t, step: engines[schedule.model_for(step)](x, t, y)
    on_step = schedule.observe                   # (step, x_after)

:func:`parse_schedule` reads both text forms; ``str(schedule)`` writes them back.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from typing import TYPE_CHECKING

from ..errors import ScheduleError
from .settings import StepInfo

if TYPE_CHECKING:  # torch is needed by adaptive schedules only, and imported there
    from torch import Tensor

DISTANCES = ("mae", "mse")
ADAPTIVE_PREFIX = "adaptive"
_INT = re.compile(r"[0-9]+")


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

    def reset(self, x0: Tensor) -> None:
        """Start a run from the state ``x0``."""

    def observe(self, step: StepInfo, x_after: Tensor) -> None:
        """Take note of the state after ``step`` (an ``on_step`` callback for the sampler)."""

    def validate_against(self, available: Iterable[int]) -> None:
        """Raise ScheduleError, naming what is missing, if a count of the schedule has no model in ``available``."""
        have = sorted(set(available))
        missing = [c for c in self.counts if c not in have]
        if missing:
            raise ScheduleError(
                f"the schedule {str(self)!r} uses mediator count(s) {', '.join(map(str, missing))}, which the "
                f"bundle lacks; it has {', '.join(map(str, have)) or 'none'}. Build engines for the missing "
                "count(s) or use a schedule with only the counts the bundle has."
            )


# ---------------------------------------------------------------------------------------------------------
# Fixed schedules


def _check_counts(counts: tuple, hint: str = "") -> None:
    """Mediator counts of a schedule: positive integers, each once."""
    for i, c in enumerate(counts):
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
                raise ScheduleError(f"the fraction {b!r} does not come after the previous one ({previous!r}); "
                                    f"fractions must increase", item=i, part="fraction")
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

    def __init__(self, counts: Sequence[int], ratios: Sequence[float], *, warmup: int = 3,
                 distance: str = "mae", per_sample: bool = False):
        counts, ratios = tuple(counts), tuple(ratios)
        if not 2 <= len(counts) <= 3:
            raise ScheduleError(f"an adaptive schedule switches between 2 or 3 mediator counts, got {counts}")
        _check_counts(counts)
        if len(ratios) != len(counts) - 1:
            raise ScheduleError(
                f"{len(counts)} counts need {len(counts) - 1} ratio(s) (one per switch), got {len(ratios)}: "
                f"{ratios}"
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
        self._prev: Tensor | None = None  # the state after the last observed step; None until reset
        #: d_i of each observed step: floats in batch mode, (B,) float64 tensors per sample.
        self.distances: list[Tensor | float] = []
        #: Every change of model in the current run, in order.
        self.switches: list[Switch] = []

    @property
    def counts(self) -> tuple[int, ...]:
        return self._counts

    def __str__(self) -> str:
        text = (f"{ADAPTIVE_PREFIX}:{','.join(map(str, self._counts))}"
                f":ratios={','.join(repr(r) for r in self.ratios)}:warmup={self.warmup}:distance={self.distance}")
        return text + (":per-sample" if self.per_sample else "")

    def __repr__(self) -> str:
        return f"AdaptiveSchedule({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdaptiveSchedule) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    # -- a run ----------------------------------------------------------------------------------------------

    def reset(self, x0: Tensor) -> None:
        """Start a run: x0 is the state before step 0; every sample starts on m1."""
        import torch

        self._prev = x0.detach().clone()
        rows = x0.shape[0] if self.per_sample else 1
        self._d0 = torch.zeros(rows, dtype=torch.float64)
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

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        import torch

        diff = a.to(torch.promote_types(a.dtype, torch.float32)) - b.to(torch.promote_types(b.dtype, torch.float32))
        diff = diff.abs() if self.distance == "mae" else diff * diff
        if self.per_sample:
            return diff.flatten(1).mean(dim=1).to("cpu", torch.float64)  # (B,)
        return diff.mean().reshape(1).to("cpu", torch.float64)  # (1,): one distance over the whole state

    def observe(self, step: StepInfo, x_after: Tensor) -> None:
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
        d = self._distance(x_after, self._prev)
        self._prev = x_after.detach().clone()
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
                        self.switches.append(Switch(i, self._counts[stage], self._counts[stage + 1],
                                                    row if self.per_sample else None))

    @property
    def d0(self) -> Tensor | float:
        """D0 so far: a float in batch mode, a (B,) float64 tensor per sample."""
        return self._d0.clone() if self.per_sample else float(self._d0[0])


# ---------------------------------------------------------------------------------------------------------
# Text forms


def _fail(text: str, pos: int, message: str, hint: str) -> ScheduleError:
    return ScheduleError(f"bad mediator schedule {text!r} at character {pos + 1}: {message}\n"
                         f"    {text}\n    {' ' * pos}^\n{hint}")


_FIXED_HINT = "write COUNT:FRACTION,...,COUNT, e.g. '16:0.3,32:0.7,64' (or one count, e.g. '64')"
_ADAPTIVE_HINT = ("write adaptive:COUNTS:ratios=R1[,R2][:warmup=K][:distance=mae|mse][:per-sample], "
                  "e.g. 'adaptive:16,32,64:ratios=0.5,0.2'")


def _parse_int(text: str, pos: int, token: str, what: str, hint: str) -> int:
    if not _INT.fullmatch(token) or int(token) < 1:
        raise _fail(text, pos, f"{what} {token!r} is not a positive integer", hint)
    return int(token)


def _parse_float(text: str, pos: int, token: str, what: str, hint: str) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or token.strip() != token or not token:
        raise _fail(text, pos, f"{what} {token!r} is not a number", hint)
    return value


def _split(text: str, sep: str, start: int, end: int) -> list[tuple[int, str]]:
    """The pieces of text[start:end] between ``sep``, each with its position, whitespace stripped."""
    pieces, pos = [], start
    for raw in text[start:end].split(sep):
        lead = len(raw) - len(raw.lstrip())
        pieces.append((pos + lead, raw.strip()))
        pos += len(raw) + 1
    return pieces


def _parse_fixed(text: str) -> FixedSchedule:
    counts: list[int] = []
    bounds: list[float] = []
    where: dict[tuple[str, int], tuple[int, str]] = {}  # (part, item) -> (position, "segment N (...)")
    segments = _split(text, ",", 0, len(text))
    for n, (pos, segment) in enumerate(segments, start=1):
        last = n == len(segments)
        seg = f"segment {n} ({segment!r})"
        if not segment:
            raise _fail(text, pos, f"{seg} is empty", _FIXED_HINT)
        count_text, colon, frac_text = segment.partition(":")
        count_text = count_text.rstrip()
        count = _parse_int(text, pos, count_text, f"{seg}: the mediator count", _FIXED_HINT)
        where["count", n - 1] = (pos, seg)
        frac_pos = pos + segment.index(":") + 1 if colon else pos + len(segment)
        if last and colon:
            raise _fail(text, frac_pos, f"{seg} is the last and has a fraction: the last segment runs to the "
                        "end, drop its ':FRACTION'", _FIXED_HINT)
        if not last and not colon:
            raise _fail(text, frac_pos, f"{seg} has no fraction: every segment but the last ends at one, "
                        f"e.g. '{count}:0.5'", _FIXED_HINT)
        counts.append(count)
        if last:
            break
        frac_pos += len(frac_text) - len(frac_text.lstrip())
        frac = _parse_float(text, frac_pos, frac_text.strip(), f"{seg}: the fraction", _FIXED_HINT)
        where["fraction", n - 1] = (frac_pos, seg)
        bounds.append(frac)
    return _checked(text, lambda: FixedSchedule(tuple(counts), tuple(bounds)), where, _FIXED_HINT)


def _parse_adaptive(text: str) -> AdaptiveSchedule:
    parts = _split(text, ":", 0, len(text))  # parts[0] is the prefix
    if len(parts) < 2 or not parts[1][1]:
        raise _fail(text, len(text), "the mediator counts are missing", _ADAPTIVE_HINT)
    pos, counts_text = parts[1]
    counts = []
    where: dict[tuple[str, int], tuple[int, str]] = {}
    for p, token in _split(text, ",", pos, pos + len(counts_text)):
        where["count", len(counts)] = (p, "")
        counts.append(_parse_int(text, p, token, "the mediator count", _ADAPTIVE_HINT))
    options: dict[str, object] = {}
    ratios: tuple[float, ...] | None = None
    for pos, option in parts[2:]:
        key_raw, eq, value_raw = option.partition("=")
        key, value = key_raw.strip().lower().replace("_", "-"), value_raw.strip()
        value_pos = pos + len(key_raw) + 1 + len(value_raw) - len(value_raw.lstrip()) if eq else pos
        if key in options or (key == "ratios" and ratios is not None):
            raise _fail(text, pos, f"option {key!r} is given twice", _ADAPTIVE_HINT)
        if key == "per-sample" and not eq:
            options[key] = True
        elif key == "warmup" and eq:
            options[key] = _parse_int(text, value_pos, value, "warmup", _ADAPTIVE_HINT)
        elif key == "distance" and eq:
            if value.lower() not in DISTANCES:
                raise _fail(text, value_pos, f"unknown distance {value!r}: choose mae or mse", _ADAPTIVE_HINT)
            options[key] = value.lower()
        elif key == "ratios" and eq:
            ratios = tuple(_parse_float(text, p, token, "ratio", _ADAPTIVE_HINT)
                           for p, token in _split(text, ",", value_pos, value_pos + len(value)))
        else:
            raise _fail(text, pos, f"unknown option {option!r}", _ADAPTIVE_HINT)
    if ratios is None:
        raise _fail(text, len(text), "the ratios are missing (ratios=R1 for 2 counts, ratios=R1,R2 for 3)",
                    _ADAPTIVE_HINT)
    return _checked(text, lambda: AdaptiveSchedule(counts, ratios, warmup=options.get("warmup", 3),
                                                   distance=options.get("distance", "mae"),
                                                   per_sample=options.get("per-sample", False)),
                    where, _ADAPTIVE_HINT)


def _checked(text: str, make, where: dict, hint: str):
    """The schedule ``make()`` builds. The parser reads the syntax and the schedule's class checks the values
    (the one place those rules live); an error about one value points at it in the text."""
    try:
        return make()
    except ScheduleError as e:
        if (e.part, e.item) in where:
            pos, seg = where[e.part, e.item]
            raise _fail(text, pos, f"{seg}: {e}" if seg else str(e), hint) from None
        raise ScheduleError(f"bad mediator schedule {text!r}: {e}") from None


def parse_schedule(text: str) -> Schedule:
    """Read a schedule: ``"64"``, ``"16:0.3,32:0.7,64"`` (fixed) or ``"adaptive:16,32,64:ratios=0.5,0.2"``.

    Errors name the segment and the character where the text fails, with a caret under it.
    """
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError(f"empty mediator schedule {text!r}: {_FIXED_HINT}")
    head = text.lstrip().split(":", 1)[0].strip().lower()
    if head == ADAPTIVE_PREFIX:
        return _parse_adaptive(text)
    return _parse_fixed(text)
