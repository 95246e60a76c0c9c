"""Calibration sets: the inputs each mediator count's engine really receives, recorded from real trajectories.

``medexport calibrate BUNDLE`` samples with the bundle's fp32 ONNX Runtime engines under a schedule and records
every (x, t, y) each count's engine is given (guidance doubling included). In ``schedule`` mode a count keeps
only the evaluations it serves (the few-mediator engine sees the early, noisy steps; the many-mediator engine the
late ones); in ``trajectory`` mode every count keeps every evaluation, as whole-trajectory calibration does.

A calibration set is a folder under ``calibration/``::

    calibration.json      what was recorded: bundle, schedule, sampler settings, seed, images, and per count
                          its file, sha256, rows, the steps it saw, and the source of the weights it belongs to
    m16.npz ...           x (R, C, S, S) float32, t (R,) float32, y (R,) int64, step (R,) int32

The folder is written under a temporary name and renamed when complete, so an interrupted calibration leaves
nothing that looks finished. A build checks, per count, that the data was recorded from the very weights it
quantises (the source's sha256) and that the file is unchanged; the data's hash is part of the engine's key.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.files import replace_folder, replacing, write_json
from ..errors import CalibrationError
from ..core.files import file_sha256
from ..version import __version__

log = logging.getLogger(__name__)

FORMAT = "medexport-calibration"
FORMAT_VERSION = 1
MANIFEST = "calibration.json"
MODES = ("schedule", "trajectory")
DEFAULT_ROOT = Path("calibration")


@dataclass(frozen=True)
class CountData:
    """The recorded inputs of one count's engine, as the quantiser reads them."""

    mediators: int
    path: Path
    sha256: str
    rows: int
    info: dict  # the set's description (CalibrationSet.describe)

    def arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.path) as z:
            return {k: z[k] for k in ("x", "t", "y")}

    def batches(self, batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
        """The rows as engine feeds of at most ``batch`` rows."""
        a = self.arrays()
        for i in range(0, len(a["t"]), batch):
            yield {k: v[i:i + batch] for k, v in a.items()}


class CalibrationSet:
    """A calibration folder: validated manifest; per-count data checked against the weights it belongs to."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            hint = (" (an interrupted calibration: run `medexport calibrate` again)"
                    if Path(str(self.path) + ".partial").exists() else "")
            raise CalibrationError(f"{self.path} is not a calibration set (no {MANIFEST}){hint}: record one with "
                                   f"`medexport calibrate BUNDLE`")
        try:
            self.manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise CalibrationError(f"{mpath} cannot be read ({e}): record the set again with "
                                   f"`medexport calibrate`") from None
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise CalibrationError(f"{mpath} is not a medexport calibration manifest (format {FORMAT!r} version "
                                   f"{FORMAT_VERSION}): record the set again with `medexport calibrate`")
        counts = m.get("counts")
        if not isinstance(counts, dict) or not all(
                k.isdigit() and isinstance(v, dict) and isinstance(v.get("file"), str) and "/" not in v["file"]
                and isinstance(v.get("sha256"), str) and isinstance(v.get("source"), str) for k, v in counts.items()):
            raise CalibrationError(f"{mpath}: 'counts' must map each mediator count to its file, sha256 and "
                                   f"source: record the set again with `medexport calibrate`")

    @property
    def counts(self) -> list[int]:
        return sorted(int(n) for n in self.manifest["counts"])

    @property
    def recalibrate(self) -> str:
        """The command that records this set again."""
        m = self.manifest
        return (f"medexport calibrate {m.get('bundle')} --schedule {m.get('schedule')} --num {m.get('images')} "
                f"--mode {m.get('mode')} -o {self.path}")

    def describe(self) -> dict:
        """What a built engine records about its calibration."""
        m = self.manifest
        return {"path": str(self.path), "mode": m.get("mode"), "schedule": m.get("schedule"),
                "images": m.get("images"), "seed": m.get("seed"), "bundle": m.get("bundle")}

    def data_for(self, n: int, source: str) -> CountData:
        """Count ``n``'s data, after checking it was recorded from the weights ``source`` identifies and that
        its file is intact; CalibrationError saying which `calibrate` command fixes it otherwise."""
        entry = self.manifest["counts"].get(str(n))
        if entry is None:
            raise CalibrationError(f"the calibration set {self.path} has no data for {n} mediators (it has "
                                   f"{', '.join(map(str, self.counts)) or 'none'}): record it with a schedule that "
                                   f"uses {n} mediators, e.g. `medexport calibrate BUNDLE --mode trajectory -o "
                                   f"{self.path}`")
        if entry["source"] != source:
            raise CalibrationError(f"the calibration data in {self.path} for {n} mediators was recorded from other "
                                   f"weights (source {entry['source'][:12]}, this build's is {source[:12]}): record "
                                   f"it again from a bundle of these weights: {self.recalibrate}")
        path = self.path / entry["file"]
        if not path.is_file() or path.is_symlink():
            raise CalibrationError(f"the calibration set {self.path} lacks {entry['file']}: record it again: "
                                   f"{self.recalibrate}")
        if file_sha256(path) != entry["sha256"]:
            raise CalibrationError(f"{path} does not match the hash in {MANIFEST} (edited or truncated): record "
                                   f"it again: {self.recalibrate}")
        return CountData(n, path, entry["sha256"], int(entry.get("rows", 0)), self.describe())


def record(bundle_path: str | os.PathLike, out: str | os.PathLike, *, schedule: str | None = None, num: int = 64,
           seed: int = 0, mode: str = "schedule", max_rows: int = 2048, threads: int | None = None,
           force: bool = False, sampling: dict | None = None) -> CalibrationSet:
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
            raise CalibrationError(f"calibration records what the fp32 engines receive, but {bundle_path} holds "
                                   f"{precision} engines: calibrate the fp32 bundle of these weights (`medexport "
                                   f"build` with --precision fp32)")
    pipe = Pipeline.from_bundle(bundle_path, backend="onnxruntime", threads=threads)
    counts = pipe.counts
    rows: dict[int, list[tuple]] = {n: [] for n in counts}
    calls = []  # one entry per engine call, in order: the trace's entries match them one to one

    def recording(n: int, runner):
        def call(x, t, y):
            item = (x.detach().cpu().numpy().astype(np.float32), t.detach().cpu().numpy().astype(np.float32),
                    y.detach().cpu().numpy().astype(np.int64), len(calls))
            calls.append(n)
            for k in (counts if mode == "trajectory" else [n]):
                rows[k].append(item)
            return runner(x, t, y)
        return _Recording(runner, call)

    originals = dict(pipe.runners)
    pipe.runners = {n: recording(n, r) for n, r in originals.items()}
    labels = [i % pipe.config.num_classes for i in range(num)]
    try:
        result = pipe.sample(labels, seed=seed, schedule=schedule,
                             **{k: v for k, v in (sampling or {}).items() if v is not None})
    finally:
        pipe.runners = originals
    step_of_call = [e.step for e in result.trace]
    rows = {n: [(x, t, y, step_of_call[i]) for x, t, y, i in items] for n, items in rows.items()}

    tmp = Path(str(out) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    entries = {}
    try:
        for n in counts:
            if not rows[n]:
                log.info("%d mediators serve no step under %s: no calibration data for them", n, result.settings["schedule"])
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
            entries[str(n)] = {"file": name, "sha256": file_sha256(tmp / name), "rows": int(len(t)),
                               "steps": sorted({int(s) for s in step}), "evaluations": len(rows[n]),
                               "source": source_key(bundle.entry(n).source.to_dict()), "onnx_sha256": bundle.onnx(n).sha256}
        s = result.settings
        write_json(tmp / MANIFEST, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "medexport_version": __version__,
            "bundle": str(Path(bundle_path).resolve()), "mode": mode, "schedule": s["schedule"],
            "sampling": {k: s[k] for k in ("sampler", "method", "steps", "cfg_scale", "cfg_channels")},
            "seed": seed, "images": num, "max_rows": max_rows, "counts": entries}, durable=True)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CalibrationSet(out)


class _Recording:
    """A runner that calls ``call`` (which records, then runs the runner) in its place; all else is the runner's."""

    def __init__(self, inner, call):
        self.inner, self.call = inner, call

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, x, t, y):
        return self.call(x, t, y)


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CalibrationError(f"{out} is a file, not a calibration folder: choose another --output")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise CalibrationError(f"{out} exists and is not a calibration set: choose another --output (nothing "
                                   f"was written)")
        if not force:
            raise CalibrationError(f"{out} already holds a calibration set: add --force to replace it (engines "
                                   f"built from it will be rebuilt when their data changes)")
