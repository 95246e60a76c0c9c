"""The batch sizes an engine accepts (no torch here: the torch-free runtime uses it too)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes an engine accepts (min <= opt <= max), counting the CFG doubling."""

    min: int = 1
    opt: int = 2
    max: int = 16

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """ "1:2:8" -> BatchRange(1, 2, 8); "4" -> BatchRange(4, 4, 4)."""
        try:
            parts = [int(p) for p in text.split(":")]
        except ValueError:
            raise ValueError(f"batch range {text!r} is not MIN:OPT:MAX integers (e.g. 1:2:8)") from None
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise ValueError(f"batch range {text!r} is not MIN:OPT:MAX (e.g. 1:2:8)")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def chunks(self, batch: int) -> list[int]:
        """Split ``batch`` (>= min) into as few, as even sizes within the range as possible."""
        if batch < self.min:
            raise ValueError(f"batch {batch} is below the range {self}")
        k = -(-batch // self.max)
        return [batch // k + (1 if i < batch % k else 0) for i in range(k)]


def run_in_range(run, batch: BatchRange | None, x, t, y, cat):
    """``run(x, t, y)`` for a batch of any size: as it is within ``batch`` (or with no range), split into sizes
    within it when larger, padded with copies of the last sample up to its minimum when smaller (their outputs
    dropped). Arrays of any library that slices: ``cat`` joins a list along the batch axis (``torch.cat``,
    ``numpy.concatenate``)."""
    B = len(x)
    if batch is None or batch.min <= B <= batch.max:
        return run(x, t, y)
    if B < batch.min:
        pad = batch.min - B
        return run(*(cat([a] + [a[-1:]] * pad) for a in (x, t, y)))[:B]
    outs, start = [], 0
    for size in batch.chunks(B):
        outs.append(run(x[start : start + size], t[start : start + size], y[start : start + size]))
        start += size
    return cat(outs)
