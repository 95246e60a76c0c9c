"""Runners for a bundle's engines: the one place that turns a manifest entry into a runner."""

from __future__ import annotations

from ..backend import Runner, registry
from .artifact import Artifact
from .manifest import Bundle


def engine_runner(bundle: Bundle, n: int, backend: str, *, shared=None, device: str | None = None,
                  threads: int | None = None) -> Runner:
    """A runner for the ``backend`` engine of ``n`` mediators, after checking every file's hash."""
    engine = bundle.engine(n, backend)
    path = engine.check(bundle.path)
    single = len(engine.files) == 1  # a runner that rereads one file can check the very bytes it uses
    return registry.get(backend).runner(path, n, precision=engine.precision, batch=engine.batch,
                                        record=engine.record, sha256=engine.sha256 if single else None,
                                        device=device, threads=threads, shared=shared)


def runnable_here(engine: Artifact, backend: str) -> tuple[bool, str]:
    """Whether an engine can run on this machine, and why not (compatibility only; :meth:`Artifact.check`
    says whether its files are intact)."""
    return registry.get(backend).runnable(engine.record, engine.precision)
