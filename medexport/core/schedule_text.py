"""The text forms of mediator schedules: :func:`parse_schedule` reads them, ``str(schedule)`` writes them.

The parser reads the syntax only; the schedule classes (:mod:`.schedule`) check the values, and an error about
one value is turned into a caret under it in the text.
"""

from __future__ import annotations

import math
import re

from ..errors import ScheduleError
from .schedule import ADAPTIVE_PREFIX, DISTANCES, AdaptiveSchedule, FixedSchedule, Schedule

_INT = re.compile(r"[0-9]+")


def _fail(text: str, pos: int, message: str, hint: str) -> ScheduleError:
    return ScheduleError(
        f"bad mediator schedule {text!r} at character {pos + 1}: {message}\n    {text}\n    {' ' * pos}^\n{hint}"
    )


_FIXED_HINT = "write COUNT:FRACTION,...,COUNT, e.g. '16:0.3,32:0.7,64' (or one count, e.g. '64')"
_ADAPTIVE_HINT = (
    "write adaptive:COUNTS:ratios=R1[,R2][:warmup=K][:distance=mae|mse][:per-sample], "
    "e.g. 'adaptive:16,32,64:ratios=0.5,0.2'"
)


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
            raise _fail(
                text,
                frac_pos,
                f"{seg} is the last and has a fraction: the last segment runs to the end, drop its ':FRACTION'",
                _FIXED_HINT,
            )
        if not last and not colon:
            raise _fail(
                text,
                frac_pos,
                f"{seg} has no fraction: every segment but the last ends at one, e.g. '{count}:0.5'",
                _FIXED_HINT,
            )
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
            ratios = tuple(
                _parse_float(text, p, token, "ratio", _ADAPTIVE_HINT)
                for p, token in _split(text, ",", value_pos, value_pos + len(value))
            )
        else:
            raise _fail(text, pos, f"unknown option {option!r}", _ADAPTIVE_HINT)
    if ratios is None:
        raise _fail(
            text, len(text), "the ratios are missing (ratios=R1 for 2 counts, ratios=R1,R2 for 3)", _ADAPTIVE_HINT
        )
    return _checked(
        text,
        lambda: AdaptiveSchedule(
            counts,
            ratios,
            warmup=options.get("warmup", 3),
            distance=options.get("distance", "mae"),
            per_sample=options.get("per-sample", False),
        ),
        where,
        _ADAPTIVE_HINT,
    )


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
