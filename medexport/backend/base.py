"""One runner interface for every backend: ``runner(x, t, y) -> v`` for one mediator count.

x (B, C, S, S) float32, t (B,) float32, y (B,) int64 -> v (B, C, S, S) float32, as torch tensors on the
runner's device. The runtime never asks which backend it holds. Runners are context managers
(activate / deactivate), as in Polygraphy.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from ..core.batch import BatchRange, run_in_range


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
        return run_in_range(self.infer, self.batch_range, x, t, y, torch.cat)

    def memory_bytes(self) -> int | None:
        """Device memory the runner holds beyond its inputs (weights + activations) where known."""
        return None
