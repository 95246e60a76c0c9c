"""The backends, found by folder: each knows whether it can run here, how to build its engine, whether a built
engine runs here, how to make a runner for it, its own build options and how Triton serves it.

A backend is one :class:`EngineBackend` object called ``BACKEND`` in a package of this folder
(``backend/onnxrt``, ``backend/trt``, ``backend/pytorch``, ...): :func:`discover` imports each package of the
folder, and packages installed elsewhere register through the ``medexport.backends`` entry point group or
:func:`register`. Adding a backend is adding a folder; the bundle builder, the runtime, the Triton export and the
CLI ask the registry and never test a backend's name. Nothing here imports a backend's library, and a backend's
package imports its own only when asked.

A backend's ``build`` receives the exported ONNX files *and* a lazy PyTorch model, so backends that compile
from PyTorch fit as well as those that read ONNX. The PyTorch reference (``backend/pytorch``) is a backend that
builds nothing: it runs the models the engines were built from.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.batch import BatchRange
from ..errors import BackendUnavailableError, ConfigError

if TYPE_CHECKING:
    from ..core.sampling import ModelShape


@dataclass(frozen=True)
class BackendOption:
    """A build option a backend owns: ``medexport build --<flag>``, recorded in the manifest's ``build`` under
    ``name`` and passed to the backend's :meth:`EngineBackend.build` and :meth:`EngineBackend.key_parts`.

    ``kind``: "flag" (a --x/--no-x switch) or "int" (with ``choices`` as its allowed range, inclusive).
    """

    name: str
    flag: str
    kind: str
    default: object
    help: str
    choices: tuple[int, int] | None = None

    def check(self, value: object) -> object:
        if self.kind == "flag":
            if not isinstance(value, bool):
                raise ConfigError(f"--{self.flag} is a switch (true or false), got {value!r}")
        elif (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (self.choices and not self.choices[0] <= value <= self.choices[1])
        ):
            lo, hi = self.choices or ("", "")
            raise ConfigError(
                f"--{self.flag} must be an integer{f' in {lo}..{hi}' if self.choices else ''}, got {value!r}"
            )
        return value


@dataclass(frozen=True)
class BuildInputs:
    """What a backend builds one count's engine from.

    Attributes:
        mediators: the count.
        onnx_files: the exported graph, then its external data (the graph of the build's precision).
        model: the PyTorch model the graph was exported from, made on first call (for backends that compile
            from PyTorch).
        new_file: ``new_file(suffix)`` gives the path a new engine file must take (never a file the bundle still
            vouches for).
        settings: the build's :class:`~medexport.bundle.BuildSettings` (precision, batch, opset, ...).
        options: this backend's own options (:attr:`EngineBackend.options`), by name.
        latent_shape: (C, S, S) of the model's state.
        folder: the bundle folder (for caches such as TensorRT's timing cache).
    """

    mediators: int
    onnx_files: list[Path]
    model: Callable[[], object]
    new_file: Callable[[str], Path]
    settings: object
    options: dict
    latent_shape: tuple[int, int, int]
    folder: Path


@dataclass(frozen=True)
class RunnerInputs:
    """What a runner is made from: the engine's main file (hash already checked; ``sha256`` again where the
    runner reads the file later and can check the very bytes it uses), its record, and where to run. ``model``
    makes the PyTorch model of the count (the reference backend runs it); ``shape`` is the model's state and
    classes, which the runner checks its inputs against."""

    mediators: int
    path: Path | None
    precision: str
    batch: BatchRange | None
    record: dict
    sha256: str | None = None
    device: str | None = None
    threads: int | None = None
    shared: object | None = None
    model: Callable[[], object] | None = None
    shape: ModelShape | None = None


@dataclass(frozen=True)
class TritonVariant:
    """How Triton Inference Server serves a backend's engine (``medexport export-triton --variant NAME``).

    Attributes:
        name: the variant's name.
        header: the line of ``config.pbtxt`` that says who runs it (``platform: "onnxruntime_onnx"``,
            ``backend: "python"``).
        model_file: the name the engine's main file takes in the model's version folder.
        kind: "KIND_CPU" or "KIND_GPU".
        python_model: a file copied as ``model.py`` beside it (python-backend variants), or None.
        threads_parameter: whether the model reads a "threads" parameter from its config.
    """

    name: str
    header: str
    model_file: str
    kind: str = "KIND_CPU"
    python_model: Path | None = None
    threads_parameter: bool = False


class EngineBackend(abc.ABC):
    """One backend. Its engine is a set of files in the bundle; ``record`` is what the manifest keeps about it
    beyond files and hashes (versions, hardware, providers, ...).

    Class attributes: ``name`` (the CLI's and the manifest's), ``preference`` (lower is tried first by "auto";
    None: never chosen by "auto"), ``builds_engine`` (False for a backend that runs the PyTorch models and keeps
    nothing in the bundle), ``is_reference`` (the one backend engines are compared with), ``options`` (its build
    options), ``triton`` (how Triton serves it).
    """

    name: str = ""
    preference: int | None = None
    builds_engine: bool = True
    is_reference: bool = False
    options: tuple[BackendOption, ...] = ()
    triton: tuple[TritonVariant, ...] = ()

    @abc.abstractmethod
    def status(self) -> tuple[bool, str]:
        """(usable here, why / what it runs on)."""

    def check_precision(self, precision: str) -> None:
        """BackendUnavailableError when this machine cannot build or run ``precision`` with this backend."""
        return None

    @abc.abstractmethod
    def key_parts(self, onnx_sha256: str, settings, options: dict) -> tuple:
        """What the engine is made from (the ONNX file's hash, settings, own options, versions, hardware): the
        bundle keys the engine by these, so a change to any of them rebuilds it."""

    @abc.abstractmethod
    def build(self, inputs: BuildInputs) -> tuple[list[Path], dict]:
        """Build the engine of ``inputs``: (the engine's files, main file first; the record). Files are written
        completely or not at all (temporary name, then rename)."""

    @abc.abstractmethod
    def runnable(self, record: dict, precision: str) -> tuple[bool, str]:
        """Whether an engine built with ``record`` runs on this machine: (True, "yes") or (False, why not)."""

    @abc.abstractmethod
    def runner(self, inputs: RunnerInputs):
        """A :class:`~medexport.backend.base.Runner` for the engine."""

    def shared_state(self) -> object | None:
        """What the runners of one pipeline share (TensorRT: one activation buffer), or None."""
        return None

    def memory_outside_torch(self, runners: list) -> int:
        """Device memory the runners hold outside torch's allocator (counted into peak memory)."""
        return 0


_BACKENDS: dict[str, EngineBackend] = {}
_DISCOVERED = False


def register(backend: EngineBackend) -> EngineBackend:
    """Add ``backend`` (a backend package outside this folder, or a test's); its name must be new."""
    if not isinstance(backend, EngineBackend) or not backend.name:
        raise TypeError(f"a backend is a named EngineBackend, got {backend!r}")
    known = _all()
    if backend.name in known and known[backend.name] is not backend:
        raise ValueError(f"a backend called {backend.name!r} is registered already")
    _BACKENDS[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _BACKENDS.pop(name, None)


def discover() -> None:
    """Import every backend package of this folder and of the ``medexport.backends`` entry points."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            backend = getattr(importlib.import_module(f"{__package__}.{info.name}"), "BACKEND", None)
            if isinstance(backend, EngineBackend):
                _BACKENDS.setdefault(backend.name, backend)
    from importlib.metadata import entry_points

    for point in entry_points(group="medexport.backends"):
        backend = point.load()
        if isinstance(backend, EngineBackend):
            _BACKENDS.setdefault(backend.name, backend)


def _all() -> dict[str, EngineBackend]:
    discover()
    return _BACKENDS


def names() -> list[str]:
    """Every registered backend's name."""
    return sorted(_all())


def engine_names() -> list[str]:
    """The backends that build engines (what ``build --backend`` and a bundle's engines can name)."""
    return sorted(n for n, b in _all().items() if b.builds_engine)


def preference() -> tuple[str, ...]:
    """The engine backends "auto" tries, fastest first."""
    ranked = [b for b in _all().values() if b.preference is not None]
    return tuple(b.name for b in sorted(ranked, key=lambda b: (b.preference, b.name)))


def build_choices() -> tuple[str, ...]:
    """``build --backend``'s choices."""
    return ("auto", *engine_names())


def sample_choices() -> tuple[str, ...]:
    """``sample --backend``'s choices: "auto", the reference, then every other backend."""
    ref = reference().name
    return ("auto", ref, *(n for n in names() if n != ref))


def options() -> list[tuple[EngineBackend, BackendOption]]:
    """Every backend's build options, for the CLI and the build settings."""
    return [(b, o) for b in sorted(_all().values(), key=lambda b: b.name) for o in b.options]


def triton_variants() -> dict[str, tuple[EngineBackend, TritonVariant]]:
    """Every way Triton can serve an engine, by variant name."""
    return {v.name: (b, v) for b in sorted(_all().values(), key=lambda b: b.name) for v in b.triton}


def reference() -> EngineBackend:
    """The backend that runs the PyTorch models the engines were built from (what engines are checked and
    timed against)."""
    found = [b for b in _all().values() if b.is_reference]
    if len(found) != 1:
        raise BackendUnavailableError(f"expected one reference backend, found {[b.name for b in found]}")
    return found[0]


def get(name: str) -> EngineBackend:
    """The backend called ``name``; BackendUnavailableError naming the choices for an unknown one."""
    found = _all().get(name)
    if found is None:
        raise BackendUnavailableError(f"unknown engine backend {name!r}: choose one of {', '.join(names())}")
    return found


def resolve(requested: str, precision: str | None = None) -> tuple[EngineBackend, str]:
    """(backend, why) for a build: "auto" is the first of :func:`preference` usable here (for ``precision``)."""
    if requested != "auto":
        backend = get(requested)
        if not backend.builds_engine:
            raise BackendUnavailableError(
                f"--backend {requested} builds no engine (it runs the PyTorch models): "
                f"build with one of {', '.join(engine_names())}"
            )
        ok, why = backend.status()
        if not ok:
            raise BackendUnavailableError(
                f"--backend {requested} is not available here: {why}. Use --backend "
                f"auto, or one of {', '.join(n for n in preference() if n != requested)}."
            )
        if precision is not None:
            backend.check_precision(precision)
        return backend, why
    reasons = []
    for name in preference():
        backend = get(name)
        ok, why = backend.status()
        if ok and precision is not None:
            try:
                backend.check_precision(precision)
            except BackendUnavailableError as e:
                ok, why = False, str(e)
        if ok:
            return backend, f"auto: {why}" + (f", because {'; '.join(reasons)}" if reasons else "")
        reasons.append(why)
    raise BackendUnavailableError(f"no engine backend can build here: {'; '.join(reasons)}")


__all__ = [
    "BackendOption",
    "BuildInputs",
    "EngineBackend",
    "RunnerInputs",
    "TritonVariant",
    "build_choices",
    "discover",
    "engine_names",
    "get",
    "names",
    "options",
    "preference",
    "reference",
    "register",
    "resolve",
    "sample_choices",
    "triton_variants",
    "unregister",
]
