"""One built thing of a bundle: a count's ONNX graph or one backend's engine, typed.

In the manifest an artifact is a JSON object: its files (main file first) with their sha256 hashes, the
precision, the batch range it accepts, the key of what it was built from, and whatever its backend records
(versions, hardware, providers, ...). This module is the one place that reads, writes and checks those objects:
every file of an artifact (an ONNX graph's external ``.data`` included) is hashed on every check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BundleError
from .batch import BatchRange
from .files import file_sha256
from .precision import NAMES as ALL_PRECISIONS

#: The fields an artifact always has; everything else in its JSON object is its backend's record.
_TYPED = ("file", "sha256", "files", "hashes", "precision", "batch", "key")


class ArtifactError(ValueError):
    """A manifest object that is not a valid artifact (the manifest reader turns it into a BundleError)."""


def plain_name(name: object) -> bool:
    """A file name inside the bundle folder: no path separators, not hidden, not empty."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


@dataclass(frozen=True)
class Quantization:
    """How a quantised graph was made (its ONNX entry's ``quantization`` record).

    Attributes:
        mode: "dynamic" or "static-qdq"; dtype: "int8" or "float8e4m3fn".
        quantized_layers: how many linear layers were quantised; per_channel_weights: per-channel weight scales.
        calibration: for calibrated forms, what the data was: its folder ``path``, ``file``, ``sha256``, ``rows``,
            ``mode``, ``schedule`` (None for dynamic int8).
    """

    mode: str
    dtype: str
    quantized_layers: int
    per_channel_weights: bool = False
    calibration: dict | None = None

    @classmethod
    def from_dict(cls, d: object) -> Quantization:
        if not isinstance(d, dict):
            raise ArtifactError("'quantization' is not an object")
        mode, dtype, layers = d.get("mode"), d.get("dtype"), d.get("quantized_layers")
        if not (
            isinstance(mode, str)
            and isinstance(dtype, str)
            and isinstance(layers, int)
            and not isinstance(layers, bool)
        ):
            raise ArtifactError("'quantization' needs 'mode', 'dtype' (text) and 'quantized_layers' (an integer)")
        cal = d.get("calibration")
        if cal is not None and not (
            isinstance(cal, dict)
            and all(isinstance(cal.get(k), str) for k in ("path", "file", "sha256"))
            and isinstance(cal.get("rows"), int)
        ):
            raise ArtifactError("'quantization.calibration' needs 'path', 'file', 'sha256' (text) and 'rows'")
        return cls(mode, dtype, layers, bool(d.get("per_channel_weights", False)), cal)


@dataclass(frozen=True)
class Artifact:
    files: tuple[str, ...]  # main file first (the ONNX graph, then its external data; or the engine plan)
    hashes: tuple[str, ...]  # sha256 of each file, in the same order
    precision: str
    batch: BatchRange | None = None
    key: str | None = None
    record: dict = field(default_factory=dict)

    @property
    def file(self) -> str:
        return self.files[0]

    @property
    def sha256(self) -> str:
        return self.hashes[0]

    @property
    def quantization(self) -> Quantization | None:
        """The quantisation record of a quantised graph (checked when the manifest was read), else None."""
        q = self.record.get("quantization")
        return None if q is None else Quantization.from_dict(q)

    # -- JSON -------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: object) -> Artifact:
        """The artifact a manifest object describes; ArtifactError saying what is wrong with it."""
        if not isinstance(d, dict):
            raise ArtifactError("is not an object")
        file, sha = d.get("file"), d.get("sha256")
        if not (plain_name(file) and isinstance(sha, str)):
            raise ArtifactError("lacks a plain 'file' name or its 'sha256'")
        files, hashes = d.get("files", [file]), d.get("hashes", [sha])
        if not (
            isinstance(files, list)
            and isinstance(hashes, list)
            and len(files) == len(hashes) >= 1
            and all(plain_name(f) for f in files)
            and all(isinstance(h, str) for h in hashes)
        ):
            raise ArtifactError("'files' and 'hashes' must be lists of the same length of plain file names and hashes")
        if files[0] != file or hashes[0] != sha:
            raise ArtifactError("'files' / 'hashes' must start with 'file' / 'sha256'")
        precision = d.get("precision")
        if precision not in ALL_PRECISIONS:
            raise ArtifactError(
                f"precision {precision!r} is not one of {', '.join(ALL_PRECISIONS)} (a bundle made by "
                f"another medexport version?)"
            )
        batch = d.get("batch")
        if batch is not None:
            try:
                batch = BatchRange.parse(batch) if isinstance(batch, str) else None
            except ValueError as e:
                raise ArtifactError(str(e)) from None
            if batch is None:
                raise ArtifactError(f'batch {d.get("batch")!r} is not a "min:opt:max" string')
        key = d.get("key")
        if key is not None and not isinstance(key, str):
            raise ArtifactError("'key' must be a string")
        if d.get("quantization") is not None:
            Quantization.from_dict(d["quantization"])
        return cls(tuple(files), tuple(hashes), precision, batch, key, {k: v for k, v in d.items() if k not in _TYPED})

    def to_dict(self) -> dict:
        d = {
            "file": self.file,
            "sha256": self.sha256,
            "files": list(self.files),
            "hashes": list(self.hashes),
            "precision": self.precision,
        }
        if self.batch is not None:
            d["batch"] = str(self.batch)
        if self.key is not None:
            d["key"] = self.key
        return d | self.record

    @classmethod
    def from_files(
        cls,
        paths: Iterable[Path],
        precision: str,
        *,
        batch: BatchRange | None = None,
        key: str | None = None,
        record: dict | None = None,
    ) -> Artifact:
        """An artifact for files just written (hashed now)."""
        paths = list(paths)
        return cls(
            tuple(p.name for p in paths),
            tuple(file_sha256(p) for p in paths),
            precision,
            batch,
            key,
            dict(record or {}),
        )

    # -- on disk ----------------------------------------------------------------------------------------------
    def bytes(self, folder: Path) -> int:
        return sum((folder / f).stat().st_size for f in self.files if (folder / f).is_file())

    def check(self, folder: Path) -> Path:
        """The main file's path, after checking that every file is a regular file of the folder with the
        recorded hash; BundleError saying which is not and what to do."""
        for name, sha256 in zip(self.files, self.hashes):
            path = folder / name
            if path.is_symlink():
                raise BundleError(
                    f"{path} is a symbolic link: a bundle's engines must be its own files (remove "
                    f"the link and rebuild with `medexport build ... --force`)"
                )
            if not path.is_file():
                raise BundleError(
                    f"bundle {folder} lacks {name}, which its manifest lists: rebuild with "
                    f"`medexport build` (add --force to redo everything)"
                )
            if file_sha256(path) != sha256:
                raise BundleError(
                    f"{path} does not match the hash in the manifest (edited, swapped or truncated): "
                    f"rebuild it with `medexport build ... --force`"
                )
        return folder / self.file

    def up_to_date(self, folder: Path, key: str) -> bool:
        """Built from ``key`` and every file still there, unchanged."""
        if self.key != key:
            return False
        try:
            self.check(folder)
        except BundleError:
            return False
        return True
