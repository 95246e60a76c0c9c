"""One runner interface for every backend: ``runner(x, t, y) -> v`` for one mediator count.

x (B, C, S, S) float32, t (B,) float32, y (B,) int64 -> v (B, C, S, S) float32, as torch tensors on the
runner's device. The runtime never asks which backend it holds. Runners are context managers
(activate / deactivate), as in Polygraphy.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor



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
        """"1:2:8" -> BatchRange(1, 2, 8); "4" -> BatchRange(4, 4, 4)."""
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


class Runner(abc.ABC):
    """Runs one mediator count's network. Subclasses implement :meth:`infer`."""

    backend: str = ""

    def __init__(self, mediators: int, *, precision: str = "fp32", device: str = "cpu",
                 batch_range: BatchRange | None = None, name: str | None = None):
        self.mediators = mediators
        self.precision = precision
        self.device = device
        self.batch_range = batch_range
        self.name = name or f"{self.backend}:{mediators}"
        self.is_active = False

    def activate(self) -> None:
        self.is_active = True

    def deactivate(self) -> None:
        self.is_active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abc.abstractmethod
    def infer(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """One forward for a batch inside the runner's batch range."""

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """One forward for any batch: split into chunks the engine accepts, padded up to its minimum."""
        if not self.is_active:
            self.activate()
        B, r = x.shape[0], self.batch_range
        if r is None or r.min <= B <= r.max:
            return self.infer(x, t, y)
        if B < r.min:  # pad with copies of the last sample, drop their outputs
            pad = r.min - B
            rep = lambda a: torch.cat([a, a[-1:].expand(pad, *a.shape[1:])])
            return self.infer(rep(x), rep(t), rep(y))[:B]
        outs, start = [], 0
        for size in r.chunks(B):
            outs.append(self.infer(x[start:start + size], t[start:start + size], y[start:start + size]))
            start += size
        return torch.cat(outs)

    def memory_bytes(self) -> int | None:
        """Device memory the runner holds beyond its inputs (weights + activations) where known."""
        return None

    def describe(self) -> dict:
        return {"backend": self.backend, "mediators": self.mediators, "precision": self.precision,
                "device": self.device, "batch_range": str(self.batch_range) if self.batch_range else None}

