"""The engine bundle: a folder with ``manifest.json`` and the files it names.

The manifest is plain JSON that any application can read without medexport::

    {
      "format": "medexport-bundle", "format_version": 1, "medexport_version": "0.1.0",
      "created": "...", "updated": "...",
      "model": {model config without the mediator count},
      "build": {backend, precision, batch "min:opt:max", plugin, opset, ...},
      "requested": [16, 32, 64],                  # what the build was asked for
      "data": null | {"space": "pixel", "dataset": "fashion-mnist", "range": [-1, 1], "class_names": [...]},
                                                   # what the model generates (null: sd-vae latents)
      "sampling": {sampler, method, steps, cfg_scale, cfg_channels, schedule},
                                                   # recommended settings: used where the user gives none
      "counts": {                                  # what is complete; written after each count
        "16": {
          "config": {full model config, mediator grid included},
          "source": {"kind": "checkpoint", "path", "sha256", "weights"} | {"kind": "random", "model", "seed", ...},
          "onnx": {"file", "sha256", "bytes", "precision", "opset", "files": [graph, data?], "key"},
          "engines": {"onnxruntime": {"file", "sha256", "precision", "batch", "providers", "versions",
                                      "hardware", "key"},
                      "tensorrt": {..., "tensorrt", "gpu", "compute_capability", "plugin"}}
        }, ...
      }
    }

A count is in ``counts`` only once its files are written and hashed; the manifest is replaced atomically, so
an interrupted build leaves the previous manifest (or none) and never one that vouches for a partial file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from ..version import __version__
from ..atomic import write_json
from ..errors import BundleError, CheckpointError, ConfigError, SamplingError, ScheduleError
from ..model import MediatorDiT, ModelConfig, create_model, load_checkpoint
from ..model.checkpoint import file_sha256
from ..runtime.defaults import SamplingDefaults
from .artifact import Artifact, ArtifactError

MANIFEST = "manifest.json"
FORMAT = "medexport-bundle"
FORMAT_VERSION = 1


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    write_json(path, data, durable=True)


def new_manifest(model_config: dict, build: dict, requested: list[int], data: dict | None = None,
                 sampling: dict | None = None) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "medexport_version": __version__,
            "created": now(), "updated": now(), "model": model_config, "build": build,
            "requested": sorted(requested), "data": data, "sampling": sampling or SamplingDefaults().to_dict(),
            "counts": {}}


class Bundle:
    """A built engine bundle on disk: reads and validates its manifest, checks file hashes, loads models."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)

    # -- what it holds ------------------------------------------------------------------------------------
    @property
    def counts(self) -> list[int]:
        return sorted(int(n) for n in self.manifest["counts"])

    @property
    def missing(self) -> list[int]:
        """Counts the build was asked for that are not complete (an interrupted build)."""
        return sorted(set(self.manifest.get("requested", [])) - set(self.counts))

    @property
    def data(self) -> dict | None:
        """What the model generates: None for sd-vae latents, else {"space": "pixel", "dataset", ...}."""
        return self.manifest.get("data")

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """The recorded recommended sampling settings (the reference's defaults where none are recorded)."""
        return SamplingDefaults.from_dict(self.manifest.get("sampling") or {})

    def entry(self, n: int) -> dict:
        try:
            return self.manifest["counts"][str(n)]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no engines for {n} mediators; it has "
                              f"{', '.join(map(str, self.counts)) or 'none'}") from None

    def config(self, n: int) -> ModelConfig:
        return ModelConfig.from_dict(self.entry(n)["config"])

    def backends(self, n: int) -> list[str]:
        return sorted(self.entry(n)["engines"])

    def onnx(self, n: int) -> Artifact:
        """The count's exported ONNX graph."""
        return Artifact.from_dict(self.entry(n)["onnx"])  # validated when the manifest was read

    def engine(self, n: int, backend: str) -> Artifact:
        engines = self.entry(n)["engines"]
        if backend not in engines:
            raise BundleError(f"bundle {self.path} has no {backend} engine for {n} mediators (it has "
                              f"{', '.join(engines) or 'none'}): rebuild with --backend {backend}")
        return Artifact.from_dict(engines[backend])

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
        src = self.entry(n)["source"]
        cfg = self.config(n)
        if src["kind"] == "random":
            model = create_model(src["model"], mediators=n, image_size=src["image_size"], seed=src["seed"],
                                 num_classes=cfg.num_classes, learn_sigma=cfg.learn_sigma, init=src.get("init", "random"))
            if model.config != cfg:
                raise BundleError(f"the random model recorded for {n} mediators no longer matches the manifest")
            return model
        path = Path(src["path"])
        if not path.is_file():
            raise BundleError(f"the checkpoint {path} that {n} mediators were built from is gone: the PyTorch "
                              f"reference needs it (put it back or rebuild the bundle)")
        if file_sha256(path) != src["sha256"]:
            raise BundleError(f"the checkpoint {path} changed since the bundle was built: rebuild with "
                              f"`medexport build`")
        try:
            return load_checkpoint(path, weights=src.get("weights", "ema"))
        except CheckpointError as e:
            raise BundleError(f"cannot load the checkpoint recorded for {n} mediators: {e}") from None


def open_bundle(path: str | os.PathLike) -> Bundle:
    """The bundle at ``path``, refusing an incomplete one with what to do."""
    bundle = Bundle(path)
    if not bundle.counts:
        raise BundleError(f"bundle {path} holds no complete mediator count (interrupted build?): run "
                          f"`medexport build` again with the same options to finish it")
    return bundle


def read_manifest(path: Path) -> dict:
    """The validated manifest of the bundle folder ``path``."""
    if not path.exists():
        raise BundleError(f"{path} does not exist: build a bundle with `medexport build` first")
    mpath = path / MANIFEST
    if not path.is_dir() or not mpath.is_file():
        raise BundleError(f"{path} is not an engine bundle (no {MANIFEST}): point to a folder made by "
                          f"`medexport build`")
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}): rebuild the bundle with `medexport build --force`") from None
    validate_manifest(data, mpath)
    return data


def validate_manifest(data: object, where: Path) -> None:
    def bad(msg: str):
        raise BundleError(f"{where} is not a valid medexport manifest: {msg}. Rebuild the bundle with "
                          f"`medexport build --force`")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        bad(f"'format' must be {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        bad(f"format_version {data.get('format_version')!r} is not {FORMAT_VERSION} (made by another medexport "
            f"version?)")
    for key, kind in (("model", dict), ("build", dict), ("counts", dict), ("requested", list)):
        if not isinstance(data.get(key), kind):
            bad(f"{key!r} must be a {kind.__name__}")
    if data.get("data") is not None and not (isinstance(data["data"], dict) and data["data"].get("space") == "pixel"):
        bad("'data' must be null or an object with \"space\": \"pixel\"")
    try:
        SamplingDefaults.from_dict(data.get("sampling") or {})
    except (SamplingError, ScheduleError) as e:
        bad(f"'sampling': {e}")
    for n, entry in data["counts"].items():
        if not n.isdigit() or not isinstance(entry, dict):
            bad(f"counts key {n!r} is not a mediator count with an entry")
        for key in ("config", "source", "onnx", "engines"):
            if not isinstance(entry.get(key), dict):
                bad(f"counts[{n!r}] lacks {key!r}")
        try:
            cfg = ModelConfig.from_dict(entry["config"])
        except ConfigError as e:
            bad(f"counts[{n!r}].config: {e}")
        if cfg.mediators != int(n):
            bad(f"counts[{n!r}].config says {cfg.mediators} mediators")
        shared = {k: v for k, v in cfg.to_dict().items() if k not in ("mediators", "mediator_grid")}
        if shared != data["model"]:
            diff = sorted(k for k in set(shared) | set(data["model"]) if shared.get(k) != data["model"].get(k))
            bad(f"counts[{n!r}].config disagrees with 'model' on {', '.join(diff)}")
        for what, obj in [("onnx", entry["onnx"]), *((f"engines[{k!r}]", v) for k, v in entry["engines"].items())]:
            try:
                Artifact.from_dict(obj)
            except ArtifactError as e:
                bad(f"counts[{n!r}].{what} {e}")
