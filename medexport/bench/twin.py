"""A mediator bundle and its vanilla twin: the pair checked, opened where asked, and measured.

The engines run as ``medexport sample`` runs them, with one difference for the PyTorch reference: bench runs it
at the bundle's precision and, on CUDA, through CUDA graphs, the fastest way the PyTorch model runs as is (what
a GPU deployment of it does), where ``sample --backend torch`` keeps the plain float32 reference.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backend import registry
from ..backend.pytorch.runner import TorchRunner
from ..bundle import engine_runner, open_bundle, sampling_backend
from ..core.manifest import Manifest, read_complete
from ..core.precision import precision as precision_of
from ..core.request import SampleRequest
from ..errors import BackendUnavailableError, BundleError, ConfigError
from ..runtime.pipeline import Pipeline, check_device
from .compare import SHARED_FIELDS, BenchSettings, check_forward_batch, compare_pipelines


def check_twin(bundle: Path, manifest: Manifest, vanilla: Path, twin: Manifest) -> None:
    """Refuse a pair that is not a mediator bundle and a vanilla twin of the same model at the same precision,
    saying what to build."""
    if manifest.is_full:
        raise BundleError(
            f"{bundle} is itself a vanilla (full-attention) bundle: bench a mediator bundle against "
            f"it, `medexport bench MEDIATOR_BUNDLE --against {bundle}`"
        )
    if not twin.is_full:
        raise BundleError(
            f"--against {vanilla} holds mediator counts "
            f"({', '.join(map(str, twin.count_list))}), not a full-attention model: build the vanilla "
            f"twin with `medexport build ... --attention full` and pass its folder"
        )
    diff = [
        f"{k} {manifest.model.get(k)} vs {twin.model.get(k)}"
        for k in SHARED_FIELDS
        if manifest.model.get(k) != twin.model.get(k)
    ]
    if diff:
        raise BundleError(
            f"{vanilla} is not the vanilla twin of {bundle}: the models differ in {'; '.join(diff)}. "
            f"Build the twin from the same model name and image size with --attention full"
        )
    mine, theirs = manifest.build.get("precision"), twin.build.get("precision")
    if mine != theirs:
        raise BundleError(
            f"{bundle} holds {mine} engines and {vanilla} {theirs} ones: compare engines of one "
            f"precision (build the twin with --precision {mine})"
        )


def _pytorch_backends() -> str:
    """The backends that run the PyTorch models (on any device torch runs on), as the CLI spells them."""
    return " or ".join(f"--backend {n}" for n in registry.names() if not registry.get(n).builds_engine)


def check_bench_backend(
    bundle: Path, backend: str, device: str | None, *, profile: bool = False, batch: int | None = None
) -> str:
    """The backend bench will run ``bundle`` with; refused, before anything is timed, where its engines would
    not run on ``device`` (an ONNX Runtime without its CUDA provider asked for cuda, say), where ``profile`` is
    asked of engines that run outside PyTorch, or where a per-forward ``batch`` would not fit in memory. Opens at
    most one engine (that of the smallest count)."""
    check_device(device)
    opened = open_bundle(bundle)
    check_forward_batch(batch, opened.config(opened.counts[0]), torch.device(_torch_device(device)))
    name = sampling_backend(opened, backend)
    if not registry.get(name).builds_engine:
        return name  # the PyTorch models run on any device torch runs on
    if profile:
        raise ConfigError(
            f"--profile records PyTorch's ops and kernels, and the {name} engines run outside "
            f"PyTorch: profile with {_pytorch_backends()}"
        )
    if device is not None:
        runner = engine_runner(opened, opened.counts[0], name, device=device)
        _check_runs_on(runner, name, device)
        del runner
    return name


def _torch_device(device: str | None) -> str:
    """The device the PyTorch models run on: ``device``, else CUDA where there is one."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _check_runs_on(runner, backend: str, device: str) -> None:
    where = torch.device(runner.device).type
    if where != torch.device(device).type:
        _, why = registry.get(backend).status()
        raise BackendUnavailableError(
            f"--device {device} was asked for, but the {backend} engines run on {where} "
            f"here ({why}): run the PyTorch models on {device} with {_pytorch_backends()}, "
            f"or bench on --device {where}"
        )


def open_bundle_pipeline(
    path: Path, *, backend: str = "auto", device: str | None = None, threads: int | None = None
) -> Pipeline:
    """The bundle's pipeline as bench runs it (see the module docstring); BackendUnavailableError when its
    engines would run elsewhere than ``device``, found from the first one opened."""
    check_device(device)
    bundle = open_bundle(path)
    name = sampling_backend(bundle, backend)
    engine_backend = registry.get(name)
    shared = engine_backend.shared_state()
    runners = {}
    for n in bundle.counts:
        if engine_backend.is_reference:
            runner = TorchRunner(
                bundle.torch_model(n),
                device=_torch_device(device),
                precision=precision_of(bundle.onnx(n).precision).source,
                cuda_graph=True,
            )
        else:
            runner = engine_runner(bundle, n, name, shared=shared, device=device, threads=threads)
        if device is not None and not runners:
            _check_runs_on(runner, name, device)
        runners[n] = runner
    return Pipeline(runners, bundle.config(bundle.counts[0]), defaults=bundle.sampling, data=bundle.data)


def run_bench(
    bundle: Path,
    vanilla: Path,
    request: SampleRequest,
    *,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    progress=None,
    **measure,
) -> dict:
    """Measure ``bundle`` against its vanilla twin ``vanilla`` (:func:`medexport.bench.compare_pipelines`); the
    report. ``measure``: the fields of :class:`BenchSettings` (batch, rounds, runs, warmup, profile, ...)."""
    settings = BenchSettings(**measure)
    manifest, twin = read_complete(bundle), Manifest.read(vanilla)  # an incomplete bundle: what to do
    check_twin(bundle, manifest, vanilla, twin)
    check_forward_batch(
        settings.batch, manifest.entry(manifest.count_list[0]).config, torch.device(_torch_device(device))
    )
    report = compare_pipelines(
        lambda: open_bundle_pipeline(bundle, backend=backend, device=device, threads=threads),
        lambda mine: open_bundle_pipeline(vanilla, backend=mine.backend, device=str(mine.device), threads=threads),
        request,
        settings,
        progress=progress,
    )
    return {**report, "bundle": str(bundle), "vanilla": str(vanilla), "threads": threads}


__all__ = ["check_bench_backend", "check_twin", "open_bundle_pipeline", "run_bench"]
