"""Calibration sets, as a build reads them: the inputs each mediator count's engine really receives, recorded
from real trajectories by ``medexport calibrate`` (:mod:`medexport.calibrate`).

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
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.files import file_sha256
from ..errors import CalibrationError

log = logging.getLogger(__name__)

FORMAT = "medexport-calibration"
FORMAT_VERSION = 1
MANIFEST = "calibration.json"
MODES = ("schedule", "trajectory")
DEFAULT_ROOT = Path("calibration")


#: The arrays of a count's file: (name, dtype kind, dimensions); x is (R, C, S, S), t and y are (R,).
ARRAYS = (("x", np.float32, 4), ("t", np.float32, 1), ("y", np.int64, 1))


def read_arrays(path: Path, again: str) -> dict[str, np.ndarray]:
    """x, t and y of a count's file, checked for what a quantiser can feed an engine: float32 x (R, C, S, S),
    float32 t (R,), int64 y (R,), as many rows each, at least one. CalibrationError naming the file and
    ``again`` (the command that records it again) otherwise; a file holding pickled objects is refused, never
    unpickled."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [name for name, _, _ in ARRAYS if name not in z.files]
            if missing:
                raise CalibrationError(
                    f"{path} lacks the arrays {', '.join(missing)} (it holds "
                    f"{', '.join(z.files) or 'none'}): not a calibration file of medexport; "
                    f"record it again: {again}"
                )
            arrays = {name: z[name] for name, _, _ in ARRAYS}
    except CalibrationError:
        raise
    except ValueError as e:
        why = (
            "it holds Python objects, which are never unpickled"
            if "allow_pickle" in str(e)
            else f"it cannot be read: {e}"
        )
        raise CalibrationError(
            f"{path} is not a calibration file of medexport ({why}): record it again: {again}"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CalibrationError(f"{path} cannot be read ({e}): record it again: {again}") from None
    for name, dtype, dims in ARRAYS:
        a = arrays[name]
        if a.dtype != dtype or a.ndim != dims:
            want = "(R, C, S, S)" if dims == 4 else "(R,)"
            raise CalibrationError(
                f"{path}: '{name}' is {a.dtype} of shape {a.shape}, where a calibration file "
                f"holds {np.dtype(dtype)} {want}: record it again: {again}"
            )
    rows = {name: len(a) for name, a in arrays.items()}
    x = arrays["x"]
    if len(set(rows.values())) > 1 or not rows["x"] or x.shape[2] != x.shape[3] or 0 in x.shape:
        raise CalibrationError(
            f"{path} holds rows that do not fit together (x {x.shape}, t {arrays['t'].shape}, "
            f"y {arrays['y'].shape}): record it again: {again}"
        )
    return arrays


@dataclass(frozen=True)
class CountData:
    """The recorded inputs of one count's engine, as the quantiser reads them."""

    mediators: int
    path: Path
    sha256: str
    rows: int
    info: dict  # the set's description (CalibrationSet.describe)
    again: str = "medexport calibrate"  # the command that records the set again, for messages

    def arrays(self) -> dict[str, np.ndarray]:
        return read_arrays(self.path, self.again)

    def batches(self, batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
        """The rows as engine feeds of at most ``batch`` rows."""
        a = self.arrays()
        for i in range(0, len(a["t"]), batch):
            yield {k: v[i : i + batch] for k, v in a.items()}


class CalibrationSet:
    """A calibration folder: validated manifest; per-count data checked against the weights it belongs to."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            hint = (
                " (an interrupted calibration: run `medexport calibrate` again)"
                if Path(str(self.path) + ".partial").exists()
                else ""
            )
            raise CalibrationError(
                f"{self.path} is not a calibration set (no {MANIFEST}){hint}: record one with "
                f"`medexport calibrate BUNDLE`"
            )
        try:
            self.manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise CalibrationError(
                f"{mpath} cannot be read ({e}): record the set again with `medexport calibrate`"
            ) from None
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise CalibrationError(
                f"{mpath} is not a medexport calibration manifest (format {FORMAT!r} version "
                f"{FORMAT_VERSION}): record the set again with `medexport calibrate`"
            )
        counts = m.get("counts")
        if not isinstance(counts, dict) or not all(
            k.isdigit()
            and isinstance(v, dict)
            and isinstance(v.get("file"), str)
            and "/" not in v["file"]
            and isinstance(v.get("sha256"), str)
            and isinstance(v.get("source"), str)
            for k, v in counts.items()
        ):
            raise CalibrationError(
                f"{mpath}: 'counts' must map each mediator count to its file, sha256 and "
                f"source: record the set again with `medexport calibrate`"
            )
        for k, v in counts.items():
            rows = v.get("rows")
            if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
                raise CalibrationError(
                    f"{mpath}: the rows of {k} mediators must be a whole number of at least 1, "
                    f"got {rows!r} (the file was edited): record the set again with "
                    f"`medexport calibrate`"
                )

    @property
    def counts(self) -> list[int]:
        return sorted(int(n) for n in self.manifest["counts"])

    @property
    def recalibrate(self) -> str:
        """The command that records this set again."""
        m = self.manifest
        return (
            f"medexport calibrate {m.get('bundle')} --schedule {m.get('schedule')} --num {m.get('images')} "
            f"--mode {m.get('mode')} -o {self.path}"
        )

    def describe(self) -> dict:
        """What a built engine records about its calibration."""
        m = self.manifest
        return {
            "path": str(self.path),
            "mode": m.get("mode"),
            "schedule": m.get("schedule"),
            "images": m.get("images"),
            "seed": m.get("seed"),
            "bundle": m.get("bundle"),
        }

    def data_for(self, n: int, source: str, row_shape: tuple[int, ...] | None = None) -> CountData:
        """Count ``n``'s data, after checking it was recorded from the weights ``source`` identifies, that its
        file is intact and holds rows an engine takes (``row_shape``: the model's (C, S, S), where known);
        CalibrationError saying which `calibrate` command fixes it otherwise."""
        entry = self.manifest["counts"].get(str(n))
        if entry is None:
            raise CalibrationError(
                f"the calibration set {self.path} has no data for {n} mediators (it has "
                f"{', '.join(map(str, self.counts)) or 'none'}): record it with a schedule that "
                f"uses {n} mediators, e.g. `medexport calibrate BUNDLE --mode trajectory -o "
                f"{self.path}`"
            )
        if entry["source"] != source:
            raise CalibrationError(
                f"the calibration data in {self.path} for {n} mediators was recorded from other "
                f"weights (source {entry['source'][:12]}, this build's is {source[:12]}): record "
                f"it again from a bundle of these weights: {self.recalibrate}"
            )
        path = self.path / entry["file"]
        if not path.is_file() or path.is_symlink():
            raise CalibrationError(
                f"the calibration set {self.path} lacks {entry['file']}: record it again: {self.recalibrate}"
            )
        if file_sha256(path) != entry["sha256"]:
            raise CalibrationError(
                f"{path} does not match the hash in {MANIFEST} (edited or truncated): record "
                f"it again: {self.recalibrate}"
            )
        arrays = read_arrays(path, self.recalibrate)  # what the quantiser will feed: checked before any build
        rows = len(arrays["t"])
        if row_shape is not None and arrays["x"].shape[1:] != tuple(row_shape):
            raise CalibrationError(
                f"{path} holds rows of shape {'x'.join(map(str, arrays['x'].shape[1:]))} where "
                f"the {n}-mediator model takes {'x'.join(map(str, row_shape))}: the data was "
                f"recorded for another model; record it from a bundle of this one: "
                f"{self.recalibrate}"
            )
        if entry.get("rows", rows) != rows:
            raise CalibrationError(
                f"{path} holds {rows} rows where {MANIFEST} records {entry['rows']}: record it "
                f"again: {self.recalibrate}"
            )
        return CountData(n, path, entry["sha256"], rows, self.describe(), self.recalibrate)
