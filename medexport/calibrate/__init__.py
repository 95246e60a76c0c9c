"""``medexport calibrate``: record what each mediator count's engine really receives, as a calibration set.

It samples with the bundle's fp32 ONNX Runtime engines under a schedule and records every (x, t, y) each count's
engine is given (guidance doubling included), through a :class:`~medexport.Pipeline` hook. In ``schedule`` mode a
count keeps only the evaluations it serves (the few-mediator engine sees the early, noisy steps; the
many-mediator engine the late ones); in ``trajectory`` mode every count keeps every evaluation, as
whole-trajectory calibration does. The set's format, and how a build checks it: :mod:`medexport.quant.calibration`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ..core.files import check_output_folder, file_sha256, partial_folder, replace_folder, replacing, write_json
from ..core.sampling import Evaluation
from ..errors import CalibrationError
from ..quant.calibration import FORMAT, FORMAT_VERSION, MANIFEST, MODES, CalibrationSet
from ..version import __version__

log = logging.getLogger(__name__)

__all__ = ["record"]


def record(
    bundle_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    schedule: str | None = None,
    num: int = 64,
    seed: int = 0,
    mode: str = "schedule",
    max_rows: int = 2048,
    threads: int | None = None,
    force: bool = False,
    sampling: dict | None = None,
) -> CalibrationSet:
    """Sample ``num`` images (labels cycling through the classes) with the bundle's fp32 ONNX Runtime engines
    and its recommended settings (``schedule`` overrides its schedule), record what each count's engine
    receives, keep at most ``max_rows`` rows per count (a seeded random subset), and write the set to ``out``.
    ``sampling``: keyword arguments of :meth:`Pipeline.sample` (sampler, method, steps, cfg_scale, ...) over the
    bundle's recommended settings.
    """
    from ..bundle import open_bundle
    from ..bundle.settings import source_key
    from ..runtime.pipeline import Pipeline

    if mode not in MODES:
        raise CalibrationError(f"unknown calibration mode {mode!r}: choose {' or '.join(MODES)}")
    if num < 1 or max_rows < 1:
        raise CalibrationError("--num and --max-rows must be at least 1")
    out = Path(out)
    _check_output(out, force)
    bundle = open_bundle(bundle_path)
    for n in bundle.counts:
        precision = bundle.onnx(n).precision
        if precision != "fp32":
            raise CalibrationError(
                f"calibration records what the fp32 engines receive, but {bundle_path} holds "
                f"{precision} engines: calibrate the fp32 bundle of these weights (`medexport "
                f"build` with --precision fp32)"
            )
    pipe = Pipeline.from_bundle(bundle_path, backend="onnxruntime", threads=threads)
    counts = pipe.counts
    rows: dict[int, list[tuple]] = {n: [] for n in counts}

    def record(e: Evaluation) -> None:  # what each engine receives, guidance doubling included, before it runs
        item = (
            e.x.detach().cpu().numpy().astype(np.float32),
            e.t.detach().cpu().numpy().astype(np.float32),
            e.y.detach().cpu().numpy().astype(np.int64),
            e.step.index,
        )
        for k in counts if mode == "trajectory" else [e.mediators]:
            rows[k].append(item)

    labels = [i % pipe.config.num_classes for i in range(num)]
    with pipe.hooked(record):
        result = pipe.sample(
            labels, seed=seed, schedule=schedule, **{k: v for k, v in (sampling or {}).items() if v is not None}
        )

    tmp = partial_folder(out, CalibrationError)
    rng = np.random.default_rng(seed)
    entries = {}
    try:
        for n in counts:
            if not rows[n]:
                log.info(
                    "%d mediators serve no step under %s: no calibration data for them", n, result.settings["schedule"]
                )
                continue
            x = np.concatenate([r[0] for r in rows[n]])
            t = np.concatenate([r[1] for r in rows[n]])
            y = np.concatenate([r[2] for r in rows[n]])
            step = np.concatenate([np.full(len(r[1]), r[3], np.int32) for r in rows[n]])
            if len(t) > max_rows:
                keep = np.sort(rng.choice(len(t), max_rows, replace=False))
                x, t, y, step = x[keep], t[keep], y[keep], step[keep]
            name = f"m{n}.npz"
            with replacing(tmp / name) as part, open(part, "wb") as f:
                np.savez(f, x=x, t=t, y=y, step=step)
            entries[str(n)] = {
                "file": name,
                "sha256": file_sha256(tmp / name),
                "rows": int(len(t)),
                "steps": sorted({int(s) for s in step}),
                "evaluations": len(rows[n]),
                "source": source_key(bundle.entry(n).source),
                "onnx_sha256": bundle.onnx(n).sha256,
            }
        s = result.settings
        write_json(
            tmp / MANIFEST,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "medexport_version": __version__,
                "bundle": str(Path(bundle_path).resolve()),
                "mode": mode,
                "schedule": s["schedule"],
                "sampling": {k: s[k] for k in ("sampler", "method", "steps", "cfg_scale", "cfg_channels")},
                "seed": seed,
                "images": num,
                "max_rows": max_rows,
                "counts": entries,
            },
            durable=True,
        )
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CalibrationSet(out)


def _check_output(out: Path, force: bool) -> None:
    check_output_folder(
        out, marker=MANIFEST, force=force, kind="a calibration set", error=CalibrationError, written=_written
    )


def _written(out: Path) -> set[str]:
    """The files an earlier calibration wrote into ``out``: those its manifest names."""
    try:
        counts = json.loads((out / MANIFEST).read_text()).get("counts", {})
        return {e["file"] for e in counts.values() if isinstance(e, dict) and isinstance(e.get("file"), str)}
    except (OSError, ValueError, AttributeError):
        return set()
