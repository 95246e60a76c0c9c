"""The engine bundle on disk: a folder with ``manifest.json`` (format: :mod:`medexport.core.manifest`) and the
files it names, and the PyTorch model each count was built from.

Reading the manifest and checking files need no torch (:class:`medexport.core.manifest.Manifest`); this module
adds what needs the model layer: :meth:`Bundle.torch_model`, the reference the engines are checked against.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.artifact import Artifact
from ..core.config import ModelConfig
from ..core.files import file_sha256, write_json
from ..core.manifest import FORMAT, FORMAT_VERSION, MANIFEST, CountEntry, Manifest, now  # noqa: F401
from ..core.settings import SamplingSettings
from ..errors import BundleError, CheckpointError

if TYPE_CHECKING:
    from ..model import MediatorDiT

new_manifest = Manifest.new


def write_json_atomic(path: Path, data: dict) -> None:
    write_json(path, data, durable=True)


class Bundle:
    """A built engine bundle on disk: its checked manifest (:attr:`info`, typed; :attr:`manifest`, the JSON
    object), file checks, and the PyTorch models its counts were built from."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.info = Manifest.read(self.path)
        self.manifest = self.info.raw

    # -- what it holds ------------------------------------------------------------------------------------
    @property
    def counts(self) -> list[int]:
        return self.info.count_list

    @property
    def missing(self) -> list[int]:
        """Counts the build was asked for that are not complete (an interrupted build)."""
        return self.info.missing

    @property
    def data(self) -> dict | None:
        """What the model generates: None for sd-vae latents, else {"space": "pixel", "dataset", ...}."""
        return self.info.data

    @property
    def sampling(self) -> SamplingSettings:
        """The recorded recommended sampling settings (the reference's defaults where none are recorded)."""
        return self.info.sampling

    def entry(self, n: int) -> CountEntry:
        return self.info.entry(n, f"bundle {self.path}")

    def config(self, n: int) -> ModelConfig:
        return self.entry(n).config

    def backends(self, n: int) -> list[str]:
        return self.entry(n).backends

    def onnx(self, n: int) -> Artifact:
        """The count's exported ONNX graph."""
        return self.entry(n).onnx

    def engine(self, n: int, backend: str) -> Artifact:
        engines = self.entry(n).engines
        if backend not in engines:
            raise BundleError(
                f"bundle {self.path} has no {backend} engine for {n} mediators (it has "
                f"{', '.join(engines) or 'none'}): rebuild with --backend {backend}"
            )
        return engines[backend]

    def file(self, name: str) -> Path:
        return self.path / name

    # -- integrity ----------------------------------------------------------------------------------------
    def check_engine(self, n: int, backend: str) -> Path:
        """The engine's main file, after checking every file of the engine (an ONNX graph's external weight
        data included) against the manifest's hashes."""
        return self.engine(n, backend).check(self.path)

    # -- the PyTorch reference each engine was built from ---------------------------------------------------
    def torch_model(self, n: int) -> MediatorDiT:
        """The PyTorch model the count was exported from (its checkpoint, or the seeded random model)."""
        from ..model import create_model, load_checkpoint  # torch: only the reference needs it

        entry = self.entry(n)
        src, cfg = entry.source, entry.config
        if src.kind == "random":
            model = create_model(
                src.model,
                mediators=n,
                image_size=src.image_size,
                seed=src.seed,
                num_classes=cfg.num_classes,
                learn_sigma=cfg.learn_sigma,
                init=src.init,
            )
            if model.config != cfg:
                raise BundleError(f"the random model recorded for {n} mediators no longer matches the manifest")
            return model
        path = Path(src.path)
        if not path.is_file():
            raise BundleError(
                f"the checkpoint {path} that {n} mediators were built from is gone: the PyTorch "
                f"reference needs it (put it back or rebuild the bundle)"
            )
        if file_sha256(path) != src.sha256:
            raise BundleError(
                f"the checkpoint {path} changed since the bundle was built: rebuild with `medexport build`"
            )
        try:
            return load_checkpoint(path, weights=src.weights)
        except CheckpointError as e:
            raise BundleError(f"cannot load the checkpoint recorded for {n} mediators: {e}") from None


def open_bundle(path: str | os.PathLike) -> Bundle:
    """The bundle at ``path``, refusing an incomplete one with what to do."""
    bundle = Bundle(path)
    if not bundle.counts:
        raise BundleError(
            f"bundle {path} holds no complete mediator count (interrupted build?): run "
            f"`medexport build` again with the same options to finish it"
        )
    return bundle


def read_manifest(path: Path) -> dict:
    """The checked manifest of the bundle folder ``path``, as its JSON object (for builders that update it)."""
    return Manifest.read(path).raw
