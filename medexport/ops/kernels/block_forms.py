"""Which implementation of ``medexport::mediator_block`` runs on CUDA for a shape: measured at its first use.

Candidates: the ``fused`` Triton kernel at a few launch parameters, the ``split`` form, and the ``reference``
(the decomposed block: a pooling matmul, ``mediator_attention`` with its own measured form, the conv and the add).
The first call with a new shape (batch, heads, tokens, mediators, head dim, dtype, GPU) runs each candidate on the
caller's operands, drops any whose result differs from the reference's by more than the dtype's tolerance or that
fails to compile, times the rest with CUDA events, and keeps the fastest for every later call. A measurement
costs a few hundred milliseconds per shape; warm-up runs (as the PyTorch runner makes before capturing a CUDA
graph) pay it, so graphs and compiled models replay the chosen kernel. During a CUDA-graph capture nothing is
measured: an unmeasured shape then takes the default fused launch.

``MEDEXPORT_BLOCK_FORM`` (``auto``, ``fused``, ``split``, ``reference``) or :func:`forced_form` pin a form, for
benchmarks that compare them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...errors import ConfigError

log = logging.getLogger(__name__)

ENV = "MEDEXPORT_BLOCK_FORM"
CHOICES = ("auto", "fused", "split", "reference")

#: Largest max |o - reference| / max |reference| a candidate may show to be kept, per dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@dataclass(frozen=True)
class Candidate:
    form: str  # "fused", "split" or "reference"
    launch: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return self.form + "".join(f" {k}={v}" for k, v in sorted(self.launch.items()))


DEFAULT = Candidate("fused", {"block_n": 64, "num_warps": 4})
CANDIDATES = (
    DEFAULT,
    Candidate("fused", {"block_n": 32, "num_warps": 4}),
    Candidate("fused", {"block_n": 64, "num_warps": 8}),
    Candidate("fused", {"block_n": 128, "num_warps": 8}),
    Candidate("split", {"block_n": 64, "num_warps": 4}),
    Candidate("split", {"block_n": 128, "num_warps": 8}),
    Candidate("reference"),
)

#: shape key -> (chosen candidate, {candidate name: ms or None when rejected})
_chosen: dict[tuple, tuple[Candidate, dict[str, float | None]]] = {}
_forced: list[str] = []


def requested_form() -> str:
    """The pinned form (:func:`forced_form`, else ``MEDEXPORT_BLOCK_FORM``), or "auto"."""
    form = _forced[-1] if _forced else os.environ.get(ENV, "auto").strip().lower() or "auto"
    if form not in CHOICES:
        raise ConfigError(f"{ENV}={form!r} is not one of {', '.join(CHOICES)}: unset it or pick one of those")
    return form


@contextlib.contextmanager
def forced_form(form: str) -> Iterator[None]:
    """Run the block in ``form`` ("auto", "fused", "split" or "reference") inside the context."""
    if form not in CHOICES:
        raise ConfigError(f"the mediator block's form must be one of {', '.join(CHOICES)}, got {form!r}")
    _forced.append(form)
    try:
        yield
    finally:
        _forced.pop()


def shape_key(qkv: Tensor, pool: Tensor, num_heads: int) -> tuple:
    dev = qkv.device
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return (gpu, str(qkv.dtype), qkv.shape[0], num_heads, qkv.shape[1], pool.shape[0], qkv.shape[2] // 3 // num_heads)


def measurements() -> dict[tuple, tuple[Candidate, dict[str, float | None]]]:
    """What was measured so far in this process: shape key -> (chosen, ms per candidate)."""
    return dict(_chosen)


def _time_ms(fn: Callable[[], Tensor], reps: int = 10) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def choose(key: tuple, run: Callable[[Candidate], Tensor], reference: Callable[[], Tensor], capturing: bool,
           timer: Callable[[Callable[[], Tensor]], float] = _time_ms) -> Candidate:
    """The candidate for ``key``: the pinned form, the one measured before, or the fastest correct one now
    (``timer`` returns milliseconds per call of the function it is given)."""
    form = requested_form()
    if form == "reference":
        return Candidate("reference")
    if form != "auto":
        return next(c for c in CANDIDATES if c.form == form)
    if key in _chosen:
        return _chosen[key][0]
    if capturing:
        return DEFAULT
    truth = reference().float()
    scale = truth.abs().max().item() or 1.0
    times: dict[str, float | None] = {}
    for cand in CANDIDATES:
        try:
            out = run(cand)
            err = (out.float() - truth).abs().max().item() / scale
            tol = TOLERANCE.get(out.dtype, 1e-4)
            if not err <= tol:
                log.warning("mediator block %s on %s: error %.2e over %.0e, not used", cand.name, key, err, tol)
                times[cand.name] = None
                continue
            times[cand.name] = timer(lambda c=cand: run(c))
        except Exception as e:  # a launch the GPU cannot take (resources): skip it, the others remain
            log.warning("mediator block %s on %s failed (%s), not used", cand.name, key, e)
            times[cand.name] = None
    timed = [c for c in CANDIDATES if times.get(c.name) is not None]
    best = min(timed, key=lambda c: times[c.name]) if timed else Candidate("reference")
    _chosen[key] = (best, times)
    log.info("mediator block on %s: %s (%s)", key, best.name,
             ", ".join(f"{k} {v:.3f} ms" if v is not None else f"{k} rejected" for k, v in times.items()))
    return best


__all__ = ["CANDIDATES", "CHOICES", "Candidate", "DEFAULT", "ENV", "choose", "forced_form", "measurements",
           "requested_form", "shape_key"]
