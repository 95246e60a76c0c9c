"""``medexport verify``: every engine of a bundle against the PyTorch model it was built from.

Polygraphy's Comparator runs the PyTorch reference and each engine on the same random inputs (several
timesteps and batch sizes); the error is the largest absolute difference, and the relative error that
difference over the largest reference magnitude, per engine.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backend import Runner, TorchRunner
from ..core.batch import BatchRange
from ..core.precision import precision
from ..errors import BundleError
from .manifest import Bundle
from .runners import engine_runner

log = logging.getLogger(__name__)

#: Largest relative error (max |engine - reference| / max |reference|, per batch of inputs) accepted per
#: precision. The quantised forms' are about twice to three times what the shipped demo model shows on the inputs
#: it was calibrated on (int8: 2.1%; int8-static: 10% on 16 mediators, 2.5-3.5% on 4 and 8, with per-tensor
#: activation scales across several timesteps); a broken engine is far off (~100%).
TIMESTEPS = (0.0, 0.35, 0.7, 0.96)


@dataclass(frozen=True)
class VerifyResult:
    mediators: int
    backend: str
    precision: str
    max_abs: float
    max_rel: float
    tolerance: float
    cases: int
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.max_rel <= self.tolerance)  # False for NaN


def _poly_runner(runner: Runner, name: str):
    """A Polygraphy runner around a medexport runner (so Comparator can drive any backend)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class _Adapter(BaseRunner):
        def __init__(self):
            super().__init__(name=name)

        def activate_impl(self):
            runner.activate()

        def get_input_metadata_impl(self):
            return (
                TensorMetadata()
                .add("x", np.float32, (-1, -1, -1, -1))
                .add("t", np.float32, (-1,))
                .add("y", np.int64, (-1,))
            )

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            v = runner(*(torch.from_numpy(np.ascontiguousarray(feed_dict[k])) for k in ("x", "t", "y")))
            out = OrderedDict(v=v.detach().cpu().numpy())
            self.inference_time = time.perf_counter() - start
            return out

        def deactivate_impl(self):
            runner.deactivate()

    return _Adapter()


def verification_inputs(bundle: Bundle, n: int, batch: BatchRange | None, seed: int = 0) -> list[dict]:
    """Random inputs at several timesteps and batch sizes; for a calibrated engine, rows of the inputs it was
    calibrated on (random noise at a late timestep lies outside the ranges its activations were calibrated to, as
    no real trajectory does)."""
    calibrated = _calibration_inputs(bundle, n, batch, seed)
    if calibrated is not None:
        return calibrated
    cfg = bundle.config(n)
    sizes = sorted({1, 3} if batch is None else {batch.min, min(max(batch.min, 3), batch.max), batch.opt})
    g = torch.Generator().manual_seed(seed)
    feeds = []
    for B in sizes:
        for t in TIMESTEPS:
            x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
            y = torch.randint(0, cfg.num_classes + 1, (B,), generator=g)
            feeds.append(OrderedDict(x=x.numpy(), t=np.full((B,), t, np.float32), y=y.numpy()))
    return feeds


def _calibration_inputs(bundle: Bundle, n: int, batch: BatchRange | None, seed: int) -> list[dict] | None:
    """Up to 12 feeds drawn from the calibration data a calibrated graph records, if that file is still there and
    unchanged; None otherwise (random inputs are used, and the log says so)."""
    from ..core.files import file_sha256

    q = bundle.onnx(n).quantization
    cal = q.calibration if q is not None else None
    if not cal:
        return None
    path = Path(cal["path"]) / cal["file"]
    if not path.is_file() or file_sha256(path) != cal["sha256"]:
        log.warning(
            "%d mediators: the calibration data %s is gone or changed; verifying on random inputs, which "
            "lie outside the calibrated ranges (expect larger errors)",
            n,
            path,
        )
        return None
    with np.load(path) as z:
        x, t, y = z["x"], z["t"], z["y"]
    rng = np.random.default_rng(seed)
    size = min(8 if batch is None else max(batch.min, min(8, batch.max)), len(t))
    feeds = []
    for _ in range(12):
        idx = np.sort(rng.choice(len(t), size, replace=False))
        feeds.append(OrderedDict(x=x[idx], t=t[idx], y=y[idx]))
    return feeds


def verify_bundle(
    bundle: Bundle, *, backends: list[str] | None = None, counts: list[int] | None = None, seed: int = 0
) -> list[VerifyResult]:
    """Compare every engine (or those of ``backends`` / ``counts``) with the PyTorch reference."""
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    results = []
    for n in counts or bundle.counts:
        reference = None
        for backend in backends or bundle.backends(n):
            eng = bundle.engine(n, backend)
            tol = precision(eng.precision).tolerance
            try:
                runner = engine_runner(bundle, n, backend)
            except BundleError as e:
                results.append(VerifyResult(n, backend, eng.precision, float("nan"), float("nan"), tol, 0, str(e)))
                continue
            reference = reference or TorchRunner(bundle.torch_model(n))
            feeds = verification_inputs(bundle, n, runner.batch_range, seed)
            run = Comparator.run([_poly_runner(reference, "torch"), _poly_runner(runner, backend)], data_loader=feeds)
            max_abs = max_rel = 0.0
            error = None
            (_, ref_iters), (_, eng_iters) = run[0], run[1]
            for ref_out, eng_out in zip(ref_iters, eng_iters):
                a, b = ref_out["v"].astype(np.float64), eng_out["v"].astype(np.float64)
                if not np.isfinite(a).all() or not np.isfinite(b).all():
                    # NaN compares as neither larger nor smaller: never let it through as a small error
                    which = "the PyTorch reference" if not np.isfinite(a).all() else f"the {backend} engine"
                    error = error or (
                        f"{which} output NaN/inf: the weights or the engine are broken (rebuild from "
                        f"a checkpoint with finite weights)"
                    )
                    max_abs = max_rel = float("inf")
                    continue
                err = float(np.abs(a - b).max())
                max_abs = max(max_abs, err)
                max_rel = max(max_rel, err / max(float(np.abs(a).max()), 1e-12))
            results.append(VerifyResult(n, backend, eng.precision, max_abs, max_rel, tol, len(feeds), error))
            log.info("%s %d mediators: max abs %.3g, max rel %.3g", backend, n, max_abs, max_rel)
    return results
