"""The torch array adapter of the sampling core (:mod:`medexport.core.arrays`): tensors on one device.

On a GPU nothing here waits for the device during a run: engine outputs' NaN/inf checks are queued as
device-side flags and evaluation times as CUDA events, both read once at the end of the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.arrays import Arrays, FiniteCheck, Timer, register


class TorchArrays(Arrays):
    """torch tensors on ``device``."""

    name = "torch"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def from_numpy(self, a, like=None):
        t = a if isinstance(a, Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        if like is not None:
            return t.to(like)
        return t.to(self.device)

    def to_numpy(self, a) -> np.ndarray:
        return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)

    def is_array(self, a) -> bool:
        return isinstance(a, Tensor)

    def is_float(self, a) -> bool:
        return a.is_floating_point()

    def labels(self, values: Sequence[int]):
        return torch.tensor(list(values), dtype=torch.int64, device=self.device)

    def full(self, n: int, value: float, like):
        return torch.full((n,), float(value), dtype=torch.float32, device=like.device).to(like.dtype)

    def empty_like(self, a):
        return torch.empty_like(a)

    def copy(self, a):
        return a.detach().clone()

    def cat(self, parts, axis: int = 0):
        return torch.cat(list(parts), dim=axis)

    def sqrt(self, a):
        return torch.sqrt(a)

    def scalar_sqrt(self, v):
        return np.float32(torch.sqrt(torch.tensor(np.float32(v), dtype=torch.float32)).item())

    def take(self, a, rows):
        return a[torch.tensor(list(rows), device=a.device)]

    def put(self, out, rows, values) -> None:
        out[torch.tensor(list(rows), device=out.device)] = values

    def all_finite(self, a) -> bool:
        return bool(torch.isfinite(a).all())

    def distance(self, a, b, kind: str, per_row: bool) -> np.ndarray:
        diff = a.to(torch.promote_types(a.dtype, torch.float32)) - b.to(torch.promote_types(b.dtype, torch.float32))
        diff = diff.abs() if kind == "mae" else diff * diff
        if per_row:
            return diff.flatten(1).mean(dim=1).to("cpu", torch.float64).numpy()  # (B,)
        return diff.mean().reshape(1).to("cpu", torch.float64).numpy()  # (1,): one distance over the state

    def timer(self) -> Timer:
        return _CudaTimer() if self.device.type == "cuda" else Timer()

    def finite_check(self, enabled: bool) -> FiniteCheck:
        return _DeferredFiniteCheck(self, enabled) if self.device.type == "cuda" else FiniteCheck(self, enabled)


register(Tensor, lambda t: TorchArrays(t.device))


class _DeferredFiniteCheck(FiniteCheck):
    """An immediate check would wait for the device at every evaluation: queue device-side flags, read them
    together at the end of the run (one wait), and still name the first bad evaluation."""

    def __init__(self, xp: Arrays, enabled: bool):
        super().__init__(xp, enabled)
        self.flags: list[Tensor] = []
        self.where: list[tuple] = []

    def check(self, out, backend: str, n: int, step) -> None:
        if self.enabled:
            self.flags.append(torch.isfinite(out).all())
            self.where.append((backend, n, step))

    def flush(self) -> None:
        if self.flags:
            oks = torch.stack(self.flags).cpu()
            if not oks.all():
                self.fail(*self.where[int((~oks).nonzero()[0])])


class _CudaTimer(Timer):
    """CUDA events per evaluation, read once at the end of the run."""

    def __init__(self):
        self.pending: list[tuple[int, object, object]] = []

    def start(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start, index: int) -> float:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pending.append((index, start, end))
        return float("nan")

    def flush(self) -> dict[int, float]:
        if not self.pending:
            return {}
        torch.cuda.synchronize()
        times = {i: start.elapsed_time(end) for i, start, end in self.pending}
        self.pending.clear()
        return times
