"""The array operations the sampling core needs, beyond arithmetic operators and slicing.

The samplers, guidance and schedules are written once (:mod:`.samplers`, :mod:`.sampling`) over an adapter of
this shape, so numpy (the torch-free runtime, a Triton sampler model) and torch (:class:`medexport.Pipeline`,
whose adapter lives in :mod:`medexport.runtime.arrays`) run the same code: the same float32 operations in the
same order, so the same request gives the same bits for the ODE and agrees to float rounding for the SDE.

An adapter holds no state of a run; :meth:`Arrays.timer` and :meth:`Arrays.finite_check` make the per-run
helpers (the torch adapter's defer their device reads to the end of a run).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..errors import SamplingError


class Timer:
    """Wall time of each engine call (perf_counter); ``stop`` returns milliseconds, or NaN to be filled by
    :meth:`flush` (device-timed adapters)."""

    def start(self) -> object:
        return time.perf_counter()

    def stop(self, start: object, index: int) -> float:
        return (time.perf_counter() - start) * 1e3

    def flush(self) -> dict[int, float]:
        """{trace index: ms} of the calls whose time was not known at ``stop``."""
        return {}


class FiniteCheck:
    """Stops a run whose engine outputs NaN or inf, naming the step and the engine (checked at once)."""

    def __init__(self, xp: Arrays, enabled: bool):
        self.xp, self.enabled = xp, enabled

    def check(self, out, backend: str, n: int, step) -> None:
        if self.enabled and not self.xp.all_finite(out):
            self.fail(backend, n, step)

    def flush(self) -> None:
        """Raise for the first bad output among the checks not read yet (none here)."""

    @staticmethod
    def fail(backend: str, n: int, step):
        raise SamplingError(
            f"the {backend} engine for {n} mediators produced NaN/inf at step {step.index} "
            f"(t={step.t:.4f}): rebuild it in fp32 or check the model"
        )


class Arrays:
    """numpy float32 on the CPU; the base of every adapter (override what differs)."""

    name = "numpy"

    # -- making and leaving arrays -------------------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, like=None):
        """``a`` as this library's array: on ``like``'s device and in its dtype when given (floats only)."""
        a = np.asarray(a)
        return a.astype(like.dtype if like is not None else a.dtype, copy=False)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def is_array(self, a) -> bool:
        return isinstance(a, np.ndarray)

    def is_float(self, a) -> bool:
        return a.dtype.kind == "f"

    def labels(self, values: Sequence[int]):
        return np.asarray(values, dtype=np.int64)

    def full(self, n: int, value: float, like):
        """(n,) filled with the float32 ``value``, in ``like``'s dtype."""
        return np.full((n,), np.float32(value), dtype=np.float32).astype(like.dtype, copy=False)

    def empty_like(self, a):
        return np.empty_like(a)

    def copy(self, a):
        return a.copy()

    # -- operations ----------------------------------------------------------------------------------------
    def cat(self, parts: Sequence, axis: int = 0):
        return np.concatenate(list(parts), axis=axis)

    def sqrt(self, a):
        return np.sqrt(a)

    def scalar_sqrt(self, v: np.float32) -> np.float32:
        """sqrt of a float32 scalar as this library computes it (torch's CPU sqrt is not always correctly
        rounded, and the reference takes torch.sqrt(dt))."""
        return np.sqrt(np.float32(v))

    def take(self, a, rows: Sequence[int]):
        return a[np.asarray(rows, dtype=np.int64)]

    def put(self, out, rows: Sequence[int], values) -> None:
        out[np.asarray(rows, dtype=np.int64)] = values

    def all_finite(self, a) -> bool:
        return bool(np.isfinite(a).all())

    def distance(self, a, b, kind: str, per_row: bool) -> np.ndarray:
        """Mean absolute ("mae") or squared ("mse") difference, over each row or the whole array, computed in
        at least float32; returned as float64 numpy, (rows,) or (1,)."""
        dtype = np.promote_types(a.dtype, np.float32)
        diff = a.astype(dtype, copy=False) - b.astype(dtype, copy=False)
        diff = np.abs(diff) if kind == "mae" else diff * diff
        if per_row:
            return diff.reshape(len(diff), -1).mean(axis=1).astype(np.float64)
        return np.asarray([diff.mean()], dtype=np.float64)

    # -- per-run helpers -----------------------------------------------------------------------------------
    def timer(self) -> Timer:
        return Timer()

    def finite_check(self, enabled: bool) -> FiniteCheck:
        return FiniteCheck(self, enabled)


NUMPY = Arrays()

_ADAPTERS: dict[type, object] = {np.ndarray: lambda a: NUMPY}


def register(array_type: type, adapter_for) -> None:
    """Make ``adapter_for(array)`` the adapter of arrays of ``array_type`` (the torch adapter registers itself)."""
    _ADAPTERS[array_type] = adapter_for


def adapter_of(a) -> Arrays:
    """The adapter of the array ``a``; SamplingError for a type no adapter is registered for."""
    for kind, make in _ADAPTERS.items():
        if isinstance(a, kind):
            return make(a)
    raise SamplingError(
        f"no array adapter for {type(a).__name__}: use numpy arrays, or torch tensors with medexport.runtime loaded"
    )
