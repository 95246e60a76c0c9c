"""The engine bundle's manifest, typed: :class:`Manifest`, one :class:`CountEntry` per mediator count, its
:class:`Source` and :class:`~medexport.core.artifact.Artifact` entries. Reading it needs no torch.

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
Every part is checked when the manifest is read (:meth:`Manifest.from_dict`): a hand-edited manifest is a
:class:`~medexport.errors.BundleError` that names the bad part, for every command and the Python API alike.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import BundleError, ConfigError, SamplingError, ScheduleError
from ..version import __version__
from .artifact import Artifact, ArtifactError
from .config import ATTENTIONS, FULL, ModelConfig, count_name
from .settings import RECOMMENDED, SamplingSettings

MANIFEST = "manifest.json"
FORMAT = "medexport-bundle"
FORMAT_VERSION = 1
SOURCE_KINDS = ("checkpoint", "random")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Bad(Exception):
    """One thing wrong with a manifest; :meth:`Manifest.from_dict` turns it into a BundleError."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Source:
    """Where a count's weights come from: a checkpoint file (its path, sha256 and which weights), or a seeded
    random model of a named config (``medexport build --model``)."""

    kind: str
    path: str | None = None
    sha256: str | None = None
    weights: str = "ema"
    model: str | None = None
    image_size: int | None = None
    seed: int | None = None
    init: str = "random"
    attention: str = "mediator"

    @classmethod
    def from_dict(cls, d: object) -> Source:
        if not isinstance(d, dict):
            raise _Bad("is not an object")
        kind = d.get("kind")
        if kind == "checkpoint":
            path, sha, weights = d.get("path"), d.get("sha256"), d.get("weights", "ema")
            if not (isinstance(path, str) and path and isinstance(sha, str) and isinstance(weights, str)):
                raise _Bad("a checkpoint source needs 'path' and 'sha256' strings")
            return cls("checkpoint", path=path, sha256=sha, weights=weights)
        if kind == "random":
            model, size, seed, init = d.get("model"), d.get("image_size"), d.get("seed"), d.get("init", "random")
            if not (isinstance(model, str) and _is_int(size) and size > 0 and _is_int(seed) and isinstance(init, str)):
                raise _Bad("a random source needs 'model' (text), 'image_size' (> 0) and 'seed' (integers)")
            attention = d.get("attention", "mediator")
            if attention not in ATTENTIONS:
                raise _Bad(f"'attention' must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
            return cls("random", model=model, image_size=size, seed=seed, init=init, attention=attention)
        raise _Bad(f"'kind' must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")

    def to_dict(self) -> dict:
        if self.kind == "checkpoint":
            return {"kind": "checkpoint", "path": self.path, "weights": self.weights, "sha256": self.sha256}
        d = {"kind": "random", "model": self.model, "image_size": self.image_size, "seed": self.seed, "init": self.init}
        return d | ({"attention": self.attention} if self.attention != "mediator" else {})

    def describe(self) -> str:
        """For people: the checkpoint's file name, or "random SiT-S/2 (seed 0)"."""
        if self.kind == "checkpoint":
            return Path(self.path).name
        full = ", full attention" if self.attention == "full" else ""
        return f"random {self.model}{full} (seed {self.seed})"


@dataclass(frozen=True)
class CountEntry:
    """One complete mediator count: its model config, weights' source, exported graph and engines."""

    mediators: int
    config: ModelConfig
    source: Source
    onnx: Artifact
    engines: dict[str, Artifact] = field(default_factory=dict)

    @property
    def backends(self) -> list[str]:
        return sorted(self.engines)

    @classmethod
    def from_dict(cls, n: int, d: object, model: dict) -> CountEntry:
        if not isinstance(d, dict):
            raise _Bad("is not an object")
        for key in ("config", "source", "onnx", "engines"):
            if not isinstance(d.get(key), dict):
                raise _Bad(f"lacks {key!r} (an object)")
        try:
            cfg = ModelConfig.from_dict(d["config"])
        except ConfigError as e:
            raise _Bad(f"config: {e}") from None
        if cfg.mediators != n:
            raise _Bad(f"config says {cfg.mediators} mediators")
        shared = {k: v for k, v in cfg.to_dict().items() if k not in ("mediators", "mediator_grid")}
        if shared != model:
            diff = sorted(k for k in set(shared) | set(model) if shared.get(k) != model.get(k))
            raise _Bad(f"config disagrees with 'model' on {', '.join(diff)}")
        try:
            source = Source.from_dict(d["source"])
        except _Bad as e:
            raise _Bad(f"source {e}") from None
        artifacts = {}
        for what, obj in [("onnx", d["onnx"]), *((f"engines[{k!r}]", v) for k, v in d["engines"].items())]:
            try:
                artifacts[what] = Artifact.from_dict(obj)
            except ArtifactError as e:
                raise _Bad(f"{what} {e}") from None
        engines = {k: artifacts[f"engines[{k!r}]"] for k in d["engines"]}
        return cls(n, cfg, source, artifacts["onnx"], engines)

    def to_dict(self) -> dict:
        return {
            "mediators": self.mediators,
            "config": self.config.to_dict(),
            "source": self.source.to_dict(),
            "onnx": self.onnx.to_dict(),
            "engines": {k: a.to_dict() for k, a in self.engines.items()},
        }


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, checked and typed. ``raw`` is the JSON object it was read from."""

    model: dict
    build: dict
    requested: tuple[int, ...]
    counts: dict[int, CountEntry]
    sampling: SamplingSettings
    data: dict | None = None
    created: str = ""
    updated: str = ""
    medexport_version: str = ""
    format_version: int = FORMAT_VERSION
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def count_list(self) -> list[int]:
        return sorted(self.counts)

    @property
    def is_full(self) -> bool:
        """A vanilla twin: one full-attention model (count ``FULL``), the baseline of mediator bundles."""
        return self.model.get("attention") == "full"

    @property
    def missing(self) -> list[int]:
        """Counts the build was asked for that are not complete (an interrupted build)."""
        return sorted(set(self.requested) - set(self.counts))

    def entry(self, n: int, where: object = "the bundle") -> CountEntry:
        try:
            return self.counts[int(n)]
        except (KeyError, ValueError, TypeError):
            if self.is_full:
                raise BundleError(
                    f"{where} is a vanilla twin: it holds one full-attention model, not {n} mediators"
                ) from None
            raise BundleError(
                f"{where} has no engines for {n} mediators; it has "
                f"{', '.join(map(count_name, self.count_list)) or 'none'}"
            ) from None

    @classmethod
    def new(
        cls,
        model_config: dict,
        build: dict,
        requested: list[int],
        data: dict | None = None,
        sampling: dict | None = None,
    ) -> Manifest:
        """A new manifest without counts (a builder adds them, :meth:`with_count`)."""
        recommended = SamplingSettings.from_dict(
            sampling or SamplingSettings().recommendation(), what="the checkpoint's recommended sampling settings"
        )
        stamp = now()
        return cls(
            model=model_config,
            build=build,
            requested=tuple(sorted(requested)),
            counts={},
            sampling=recommended,
            data=data,
            created=stamp,
            updated=stamp,
            medexport_version=__version__,
        )

    def with_count(self, entry: CountEntry) -> Manifest:
        """This manifest with ``entry`` complete (replacing the count's earlier entry), stamped now."""
        return replace(
            self, counts={**self.counts, entry.mediators: entry}, updated=now(), medexport_version=__version__
        )

    def same_content(self, other: Manifest) -> bool:
        """Whether the two say the same, but for the time of their last write."""
        return replace(self, updated="") == replace(other, updated="")

    def to_dict(self) -> dict:
        """The JSON object of this manifest (what :meth:`from_dict` reads back to an equal one). The recommended
        sampling record always names the :data:`~medexport.core.settings.RECOMMENDED` fields, and any other that
        is set."""
        sampling = {k: v for k, v in self.sampling.to_dict().items() if k in RECOMMENDED or v is not None}
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "medexport_version": self.medexport_version,
            "created": self.created,
            "updated": self.updated,
            "model": self.model,
            "build": self.build,
            "requested": list(self.requested),
            "data": self.data,
            "sampling": sampling,
            "counts": {str(n): e.to_dict() for n, e in sorted(self.counts.items())},
        }

    @classmethod
    def from_dict(cls, data: object, where: object = "manifest.json") -> Manifest:
        """The manifest ``data`` describes; BundleError naming what is wrong (and to rebuild)."""
        try:
            return cls._parse(data)
        except _Bad as e:
            raise BundleError(
                f"{where} is not a valid medexport manifest: {e}. Rebuild the bundle with `medexport build --force`"
            ) from None

    @classmethod
    def _parse(cls, data: object) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _Bad(f"'format' must be {FORMAT!r}")
        if data.get("format_version") != FORMAT_VERSION:
            raise _Bad(
                f"format_version {data.get('format_version')!r} is not {FORMAT_VERSION} (made by another "
                f"medexport version?)"
            )
        for key, kind in (("model", dict), ("build", dict), ("counts", dict), ("requested", list)):
            if not isinstance(data.get(key), kind):
                raise _Bad(f"{key!r} must be a{'n' if kind is dict else ''} {'object' if kind is dict else 'list'}")
        for key in ("created", "updated", "medexport_version"):
            if not isinstance(data.get(key, ""), str):
                raise _Bad(f"{key!r} must be text")
        full = data["model"].get("attention") == "full"
        try:  # the shared architecture: a model config but for the mediator count
            ModelConfig.from_dict({**data["model"], "mediators": FULL if full else 1})
        except (ConfigError, TypeError) as e:
            raise _Bad(f"'model': {e}") from None
        requested = data["requested"]
        if full and requested != [FULL]:
            raise _Bad(f"a full-attention bundle requests its one model, [{FULL}], got {requested[:5]!r}")
        if not full and not all(_is_int(n) and n > 0 for n in requested):
            raise _Bad(f"'requested' must list mediator counts (positive integers), got {requested[:5]!r}")
        info = data.get("data")
        if info is not None and not (isinstance(info, dict) and info.get("space") == "pixel"):
            raise _Bad('\'data\' must be null or an object with "space": "pixel"')
        if (
            info is not None
            and "class_names" in info
            and not (isinstance(info["class_names"], list) and all(isinstance(c, str) for c in info["class_names"]))
        ):
            raise _Bad("'data.class_names' must be a list of names")
        sampling = data.get("sampling")
        if sampling is not None and not isinstance(sampling, dict):
            raise _Bad("'sampling' must be an object of sampling settings")
        try:
            recommended = SamplingSettings.from_dict(sampling or {})
        except (SamplingError, ScheduleError) as e:
            raise _Bad(f"'sampling': {e}") from None
        counts = {}
        for key, entry in data["counts"].items():
            if not (isinstance(key, str) and key.isdigit() and (int(key) == FULL if full else int(key) > 0)):
                raise _Bad(
                    f"counts key {key!r} is not "
                    + (f"{FULL!r} (the full-attention model)" if full else "a mediator count")
                )
            try:
                counts[int(key)] = CountEntry.from_dict(int(key), entry, data["model"])
            except _Bad as e:
                raise _Bad(f"counts[{key!r}] {e}") from None
        return cls(
            model=data["model"],
            build=data["build"],
            requested=tuple(sorted(requested)),
            counts=counts,
            sampling=recommended,
            data=info,
            created=data.get("created", ""),
            updated=data.get("updated", ""),
            medexport_version=data.get("medexport_version", ""),
            format_version=FORMAT_VERSION,
            raw=data,
        )

    @classmethod
    def read(cls, folder: str | os.PathLike) -> Manifest:
        """The checked manifest of the bundle folder ``folder``."""
        folder = Path(folder)
        if not folder.exists():
            raise BundleError(f"{folder} does not exist: build a bundle with `medexport build` first")
        path = folder / MANIFEST
        if not folder.is_dir() or not path.is_file():
            raise BundleError(
                f"{folder} is not an engine bundle (no {MANIFEST}): point to a folder made by `medexport build`"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(
                f"{path} is not valid JSON ({e}): rebuild the bundle with `medexport build --force`"
            ) from None
        except OSError as e:
            raise BundleError(f"{path} cannot be read ({e.strerror or e})") from None
        return cls.from_dict(data, path)


def read_complete(folder: str | os.PathLike) -> Manifest:
    """The manifest of ``folder``, refusing a bundle that holds no complete count (with what to do)."""
    m = Manifest.read(folder)
    if not m.counts:
        raise BundleError(
            f"bundle {folder} holds no complete mediator count (interrupted build?): run "
            f"`medexport build` again with the same options to finish it"
        )
    return m
