"""The engine backends, found by name: each knows whether it can run here, how to build its engine from an
exported ONNX file, whether a built engine runs here, and how to make a runner for it.

Adding a backend means writing one :class:`EngineBackend` in its own folder and naming it in ``_MODULES``; the
bundle builder, the runtime and the CLI ask the registry and never test a backend's name. Nothing here imports a
backend's library: each object imports its own when asked.

The PyTorch backend ("torch") runs the models the engines were built from (the reference); it builds nothing,
so it is a sampling choice (:data:`SAMPLE_CHOICES`) but not an engine backend.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable
from pathlib import Path

from ..errors import BackendUnavailableError
from .base import BatchRange, Runner

#: Engine backends, fastest first: "auto" takes the first that can do the job.
PREFERENCE = ("tensorrt", "onnxruntime")
#: name -> module that defines its ``BACKEND`` object.
_MODULES = {"tensorrt": "medexport.backend.trt", "onnxruntime": "medexport.backend.onnxrt"}

#: --backend of ``build``, ``verify`` and ``sample`` (one vocabulary; "torch" only where the reference can run).
BUILD_CHOICES = ("auto", *sorted(PREFERENCE))
SAMPLE_CHOICES = ("auto", "torch", *sorted(PREFERENCE))


class EngineBackend(abc.ABC):
    """One engine backend. Its engine is a set of files in the bundle; ``record`` is what the manifest keeps
    about it beyond files and hashes (versions, hardware, providers, ...)."""

    name: str = ""
    title: str = ""  # for people: "ONNX Runtime"

    @abc.abstractmethod
    def status(self) -> tuple[bool, str]:
        """(usable here, why / what it runs on)."""

    def check_precision(self, precision: str) -> None:
        """BackendUnavailableError when this machine cannot build or run ``precision`` with this backend."""

    @abc.abstractmethod
    def key_parts(self, onnx_sha256: str, settings) -> tuple:
        """What the engine is made from (the ONNX file's hash, settings, versions, hardware): the bundle keys
        the engine by these, so a change to any of them rebuilds it."""

    @abc.abstractmethod
    def build(self, onnx_files: list[Path], new_file: Callable[[str], Path], settings,
              latent_shape: tuple[int, int, int], folder: Path) -> tuple[list[Path], dict]:
        """Build the engine for the exported graph ``onnx_files`` (graph first, then its external data) into
        ``folder``.

        ``new_file(suffix)`` gives the path a new engine file must take (never a file the bundle still vouches
        for). Returns (the engine's files, main file first; the record). Files are written completely or not at
        all (temporary name, then rename)."""

    @abc.abstractmethod
    def runnable(self, record: dict, precision: str) -> tuple[bool, str]:
        """Whether an engine built with ``record`` runs on this machine: (True, "yes") or (False, why not)."""

    @abc.abstractmethod
    def runner(self, path: Path, mediators: int, *, precision: str, batch: BatchRange | None, record: dict,
               sha256: str | None, device: str | None, threads: int | None, shared: object | None) -> Runner:
        """A runner for the engine whose main file is ``path`` (hash already checked; ``sha256`` again where the
        runner reads the file later and can check the very bytes it uses)."""

    def shared_state(self) -> object | None:
        """What the runners of one pipeline share (TensorRT: one activation buffer), or None."""
        return None

    def memory_outside_torch(self, runners: list[Runner]) -> int:
        """Device memory the runners hold outside torch's allocator (counted into peak memory)."""
        return 0


def names() -> list[str]:
    """Every registered engine backend's name."""
    return sorted(_MODULES)


def get(name: str) -> EngineBackend:
    """The engine backend called ``name``; ConfigError-like BackendUnavailableError for an unknown one."""
    if name not in _MODULES:
        raise BackendUnavailableError(f"unknown engine backend {name!r}: choose one of {', '.join(sorted(_MODULES))}")
    return importlib.import_module(_MODULES[name]).BACKEND


def resolve(requested: str, precision: str | None = None) -> tuple[EngineBackend, str]:
    """(backend, why) for a build: "auto" is the first of :data:`PREFERENCE` usable here (for ``precision``)."""
    if requested != "auto":
        backend = get(requested)
        ok, why = backend.status()
        if not ok:
            raise BackendUnavailableError(f"--backend {requested} is not available here: {why}. Use --backend "
                                          f"auto, or one of {', '.join(n for n in PREFERENCE if n != requested)}.")
        if precision is not None:
            backend.check_precision(precision)
        return backend, why
    reasons = []
    for name in PREFERENCE:
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
