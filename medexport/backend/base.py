"""One runner interface for every backend: ``runner(x, t, y) -> v`` for one mediator count.

x (B, C, S, S) float32, t (B,) float32, y (B,) int64 -> v (B, C, S, S) float32, as torch tensors on the
runner's device. The runtime never asks which backend it holds. Runners are context managers
(activate / deactivate), as in Polygraphy.

Every runner checks its inputs the same way before any backend sees them (:func:`check_inputs`): backends differ
on what they do with a bad one (an embedding lookup raises on label -1 in PyTorch; ONNX Runtime's Gather reads
the last row, the null class), so none is let through.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from ..core.batch import BatchRange, run_in_range
from ..core.sampling import ModelShape
from ..errors import InputError


class Runner(abc.ABC):
    """Runs one mediator count's network. Subclasses implement :meth:`infer`."""

    backend: str = ""

    def __init__(
        self,
        mediators: int,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        batch_range: BatchRange | None = None,
        name: str | None = None,
        shape: ModelShape | None = None,
    ):
        """``shape``: the model's state and classes, which inputs are checked against (None: unknown, then only
        what holds for every model is checked)."""
        self.mediators = mediators
        self.precision = precision
        self.device = device
        self.batch_range = batch_range
        self.name = name or f"{self.backend}:{mediators}"
        self.shape = shape
        self.is_active = False
        self._labels_checked: tuple[Tensor, int] | None = None  # the last labels checked, and their version

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
        """One forward for any batch: split into chunks the engine accepts, padded up to its minimum. InputError,
        before anything runs, for inputs that are not (:func:`check_inputs`)."""
        # A sampling run passes the same labels at every step: their values are read (a device sync) once
        labels_known = (
            self._labels_checked is not None and self._labels_checked[0] is y and self._labels_checked[1] == y._version
        )
        check_inputs(x, t, y, self.shape, where=f"the {self.name} runner", labels=not labels_known)
        self._labels_checked = (y, y._version)
        if not self.is_active:
            self.activate()
        return run_in_range(self.infer, self.batch_range, x, t, y, torch.cat)

    def memory_bytes(self) -> int | None:
        """Device memory the runner holds beyond its inputs (weights + activations) where known."""
        return None


def check_inputs(
    x: Tensor, t: Tensor, y: Tensor, shape: ModelShape | None, *, where: str = "the runner", labels: bool = True
) -> None:
    """Refuse inputs that a runner of any backend cannot take, alike for all: InputError naming the input and what
    it must be.

    x: (B, C, S, S) floating point, B >= 1; t: (B,) floating point; y: (B,) integer labels in 0..num_classes, the
    last of which, ``num_classes`` itself, is the null class that guidance passes for the unconditional half.
    ``shape`` gives C, S and num_classes (None: not checked). ``labels``: also read the labels' values (a device
    sync on a GPU)."""
    for name, value in (("x", x), ("t", t), ("y", y)):
        if not isinstance(value, Tensor):
            raise InputError(f"{where}: {name} must be a torch tensor, got {type(value).__name__}")
    state = (shape.channels, shape.size, shape.size) if shape is not None else None
    want = f"(B, {', '.join(map(str, state))})" if state else "(B, C, S, S)"
    if x.dim() != 4 or (state is not None and tuple(x.shape[1:]) != state):
        raise InputError(f"{where}: x must be {want}, got {tuple(x.shape)}")
    B = x.shape[0]
    if B == 0:
        raise InputError(f"{where}: x holds no samples (batch 0): give at least one")
    for name, value in (("t", t), ("y", y)):
        if tuple(value.shape) != (B,):
            raise InputError(f"{where}: {name} must be ({B},), one per sample of x, got {tuple(value.shape)}")
    for name, value in (("x", x), ("t", t)):
        if not value.is_floating_point():
            raise InputError(f"{where}: {name} must be floating point (float32), got {value.dtype}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"{where}: y must be integer class labels (int64), got {y.dtype}")
    if not labels:
        return
    top = shape.num_classes if shape is not None else None  # None: any label from 0 up
    outside = (y < 0) | (y > top) if top is not None else y < 0
    if bool(outside.any()):
        bad = y[outside].unique()[:5].tolist()
        classes = (
            f"0..{top} (classes 0..{top - 1}, and {top}, the null class that guidance passes)"
            if top is not None
            else "0 and up"
        )
        raise InputError(f"{where}: labels {bad} are outside {classes}")
