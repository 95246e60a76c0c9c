"""Runners for a bundle's engines: the one place that turns a manifest entry into a runner, and that says which
backend "auto" samples a bundle with."""

from __future__ import annotations

from ..backend import registry
from ..backend.registry import RunnerInputs
from ..core.artifact import Artifact
from ..core.sampling import ModelShape
from ..errors import BackendUnavailableError
from .manifest import Bundle


def engine_runner(
    bundle: Bundle, n: int, backend: str, *, shared=None, device: str | None = None, threads: int | None = None
):
    """A runner for the ``backend`` engine of ``n`` mediators, after checking every file's hash (a backend that
    builds nothing runs the count's PyTorch model). It checks its inputs against the count's model, whichever
    backend made it."""
    engine_backend = registry.get(backend)
    shape = ModelShape.of(bundle.config(n))
    if not engine_backend.builds_engine:
        onnx = bundle.onnx(n)  # the bundle's precision: a backend that compiles the model may run it in it
        runner = engine_backend.runner(
            RunnerInputs(
                n,
                None,
                onnx.precision,
                onnx.batch,
                {},
                device=device,
                threads=threads,
                shared=shared,
                model=lambda: bundle.torch_model(n),
                shape=shape,
            )
        )
    else:
        engine = bundle.engine(n, backend)
        path = engine.check(bundle.path)
        single = len(engine.files) == 1  # a runner that rereads one file can check the very bytes it uses
        runner = engine_backend.runner(
            RunnerInputs(
                n,
                path,
                engine.precision,
                engine.batch,
                engine.record,
                sha256=engine.sha256 if single else None,
                device=device,
                threads=threads,
                shared=shared,
                model=lambda: bundle.torch_model(n),
                shape=shape,
            )
        )
    if getattr(runner, "shape", None) is None:  # a backend (a plug-in's, say) that did not pass it on
        runner.shape = shape
    return runner


def runnable_here(engine: Artifact, backend: str) -> tuple[bool, str]:
    """Whether an engine can run on this machine, and why not (compatibility only; :meth:`Artifact.check`
    says whether its files are intact)."""
    return registry.get(backend).runnable(engine.record, engine.precision)


def sampling_backend(bundle: Bundle, requested: str = "auto") -> str:
    """The backend to sample ``bundle`` with: ``requested`` after checking that every count has its engine and
    that it runs here; for "auto" the first of the registry's preference for which that holds (the same
    preference as ``build --backend auto``). BackendUnavailableError says what is missing."""
    counts = bundle.counts
    if requested == "auto":
        for name in registry.preference():
            if all(name in bundle.backends(n) and runnable_here(bundle.engine(n, name), name)[0] for n in counts):
                return name
        requested = registry.preference()[-1]  # its error below says why nothing runs
    backend = registry.get(requested)
    if not backend.builds_engine:
        ok, why = backend.status()
        if not ok:
            raise BackendUnavailableError(f"--backend {requested} cannot run here: {why}")
        return requested
    for n in counts:
        if requested not in bundle.backends(n):
            raise BackendUnavailableError(
                f"bundle {bundle.path} has no {requested} engine for {n} mediators (it "
                f"has {', '.join(bundle.backends(n)) or 'none'}): rebuild it with "
                f"--backend {requested}"
            )
        ok, why = runnable_here(bundle.engine(n, requested), requested)
        if not ok:
            raise BackendUnavailableError(f"the {requested} engine for {n} mediators cannot run here: {why}")
    return requested
