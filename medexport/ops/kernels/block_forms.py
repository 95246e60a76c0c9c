"""Which implementation of ``medexport::mediator_block`` runs on CUDA for a shape: measured at its first use.

Candidates: the ``fused`` Triton kernel at a few launch parameters, the ``split`` form, and the ``reference``
(the decomposed block: a pooling matmul, ``mediator_attention`` with its own measured form, the conv and the add).
The first call with a new shape (batch, heads, tokens, mediators, head dim, dtype, GPU) runs each candidate on the
caller's operands, drops any whose result differs from the reference's by more than the dtype's tolerance or that
fails to compile, times the rest with CUDA events, and keeps the fastest for every later call. A measurement
costs a few hundred milliseconds per shape; warm-up runs (as the PyTorch runner makes before capturing a CUDA
graph) pay it, so graphs and compiled models replay the chosen kernel. During a CUDA-graph capture nothing is
measured: an unmeasured shape then takes the default fused launch.

Choices are kept in ``block_forms.json`` in medexport's cache folder (:func:`medexport.core.cache.cache_dir`),
keyed by the GPU, the versions of torch, triton and these kernels, and the shape, so a later process on the same
machine reuses them instead of measuring again; a folder that cannot be written only means measuring again.

``MEDEXPORT_BLOCK_FORM`` (``auto``, ``fused``, ``split``, ``reference``) or :func:`forced_form` pin a form, for
benchmarks that compare them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ...core.cache import cache_dir
from ...core.files import write_json
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


@functools.cache
def _code_version() -> str:
    """torch, triton and a hash of the kernels' source: a kept choice is reused only for the same code."""
    import triton

    src = Path(__file__).with_name("triton_block.py").read_bytes() + Path(__file__).read_bytes()
    return f"torch {torch.__version__} triton {triton.__version__} {hashlib.sha256(src).hexdigest()[:12]}"


def _cache_file() -> Path:
    return cache_dir("block_forms.json")


def _key_text(key: tuple) -> str:
    return " | ".join(map(str, (_code_version(), *key)))


@functools.cache
def _kept() -> dict[str, str]:
    """Choices kept by earlier processes: key text -> candidate name (empty when there are none or the file is
    unreadable)."""
    try:
        data = json.loads(_cache_file().read_text())
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _keep(key: tuple, cand: Candidate) -> None:
    kept = _kept()
    kept[_key_text(key)] = cand.name
    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        write_json(_cache_file(), dict(sorted(kept.items())))
    except OSError as e:  # a read-only or full cache folder: the choice is measured again next time
        log.debug("could not keep the mediator block's choice in %s: %s", _cache_file(), e)


def _recalled(key: tuple) -> Candidate | None:
    name = _kept().get(_key_text(key)) if key[0] != "cpu" else None
    return next((c for c in CANDIDATES if c.name == name), None)


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


def choose(
    key: tuple,
    run: Callable[[Candidate], Tensor],
    reference: Callable[[], Tensor],
    capturing: bool,
    timer: Callable[[Callable[[], Tensor]], float] = _time_ms,
    fresh: bool = False,
) -> Candidate:
    """The candidate for ``key``: the pinned form, the one measured before (in this process or kept by an earlier
    one; ``fresh`` measures again), or the fastest correct one now (``timer`` returns milliseconds per call of
    the function it is given)."""
    form = requested_form()
    if form == "reference":
        return Candidate("reference")
    if form != "auto":
        return next(c for c in CANDIDATES if c.form == form)
    if key in _chosen and not fresh:
        return _chosen[key][0]
    recalled = None if fresh else _recalled(key)
    if recalled is not None:
        _chosen[key] = (recalled, {})
        return recalled
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
    if key[0] != "cpu":
        _keep(key, best)
    log.info(
        "mediator block on %s: %s (%s)",
        key,
        best.name,
        ", ".join(f"{k} {v:.3f} ms" if v is not None else f"{k} rejected" for k, v in times.items()),
    )
    return best


def precompile(
    tokens: int, mediators: int, heads: int, head_dim: int, dtype: torch.dtype, device: str | torch.device = "cuda"
) -> list[str]:
    """Compile every kernel launch the op may measure for this shape (Triton keeps them in its disk cache, so a
    later process only loads them), by running each once on random operands of batch 1; returns the candidates
    that failed, with why. The kernels are specialised on the shape's sizes, not on the batch."""
    from . import triton_block

    ins = triton_block.example_operands(1, tokens, mediators, heads, head_dim, dtype, device)
    failed = []
    for cand in CANDIDATES:
        if cand.form == "reference":
            continue
        try:
            triton_block.triton_mediator_block(*ins, form=cand.form, **cand.launch)
        except Exception as e:  # reported, not fatal: choose() skips such a launch too
            failed.append(f"{cand.name}: {type(e).__name__}: {str(e)[:200]}")
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return failed


__all__ = [
    "CANDIDATES",
    "CHOICES",
    "Candidate",
    "DEFAULT",
    "ENV",
    "choose",
    "forced_form",
    "measurements",
    "precompile",
    "requested_form",
    "shape_key",
]
