"""Benchmarking sampling runs: the deployed engines against the PyTorch reference on the same inputs, run by
run in alternation, and the numbers of the summary table (memory probes: :mod:`.memory`; files: :mod:`.report`)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.request import SampleRequest
from ..errors import SamplingError
from .memory import current_memory, peak_memory, reset_peak_memory
from .pipeline import Pipeline, SampleResult
from .report import run_summary  # noqa: F401  (the summary a benchmark extends; here for its importers)


def check_comparable(pipe: Pipeline, bundle, other: Pipeline, other_bundle) -> None:
    """Refuse, before anything is timed, a bundle that ``sample --benchmark --against`` cannot compare with
    ``bundle``: another model, or the other side of a mediator/vanilla pair (which ``medexport bench``
    measures, with ratios and FLOPs; a sampling benchmark compares engines of the same counts)."""
    mine, theirs = pipe.config, other.config
    if mine.is_full != theirs.is_full:
        full, mediator = (bundle, other_bundle) if mine.is_full else (other_bundle, bundle)
        raise SamplingError(
            f"{full} is a vanilla (full-attention) bundle and {mediator} a mediator one: "
            f"`sample --benchmark --against` compares engines of the same counts (another precision "
            f"or backend); measure a mediator bundle against its vanilla twin with `medexport bench "
            f"{mediator} --against {full}`"
        )
    if theirs.with_mediators(mine.mediators) != mine:
        raise SamplingError(f"--against {other_bundle} holds another model than {bundle}: compare bundles of one model")


@dataclass
class BackendStats:
    """Timed runs of one pipeline (one backend)."""

    backend: str
    results: list[SampleResult] = field(default_factory=list)
    peak_memory_bytes: int | None = None  # what the pipeline added: weights, sessions, activations
    warmup_seconds: float | None = None  # opening and first-running every engine (Pipeline.warmup), apart

    @property
    def last(self) -> SampleResult:
        return self.results[-1]

    def batch_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.results)

    def images_per_second(self) -> float:
        return len(self.last.latents) / self.batch_seconds()

    def step_ms_per_count(self) -> dict[int, float]:
        """Mean wall time of one denoising step per mediator count (all evaluations of a step summed)."""
        out = {}
        for n in sorted({e.mediators for e in self.last.trace}):
            per_run = []
            for r in self.results:
                steps: dict[int, float] = {}
                for e in r.trace:
                    if e.mediators == n:
                        steps[e.step] = steps.get(e.step, 0.0) + e.ms
                per_run.append(sum(steps.values()) / len(steps))
            out[n] = statistics.mean(per_run)
        return out

    def overhead_fraction(self) -> float:
        """Share of the run not spent inside engine calls (the runtime's own per-step cost)."""
        fr = [max(0.0, 1 - r.engine_ms() / 1e3 / r.seconds) for r in self.results]
        return statistics.median(fr)


def open_and_warm(
    factory: Callable[[], Pipeline],
    request: SampleRequest,
    *,
    warmup: int = 1,
    baseline: int | None = None,
    progress=None,
) -> tuple[Pipeline, BackendStats]:
    """Create a pipeline, open and warm every engine (``Pipeline.warmup``), make ``warmup`` untimed runs, and
    return it with its stats: the peak memory during all that minus what was in use before it was created
    (``baseline`` for a pipeline the caller created already), and the warm-up time."""
    from ..backend import registry

    # what is in use before the pipeline exists, on every device it may turn out to run on
    before = {"cpu": current_memory(torch.device("cpu"))}
    if torch.cuda.is_available():
        before["cuda"] = current_memory(torch.device("cuda"))  # 0 while CUDA is not started: starts nothing
    p = factory()
    base = before.get(p.device.type, 0) if baseline is None else baseline
    reset_peak_memory(p.device)
    opened = p.warmup(request)  # every engine before the first step: no timed step pays for a session
    for _ in range(warmup):
        p.run(request)
        if progress is not None:
            progress()
    stats = BackendStats(
        p.backend, peak_memory_bytes=max(0, peak_memory(p.device) - base), warmup_seconds=sum(opened.values())
    )
    # e.g. TensorRT's shared activation buffer, outside torch's allocator (0 for the others)
    stats.peak_memory_bytes += registry.get(p.backend).memory_outside_torch(list(p.runners.values()))
    return p, stats


def run_benchmarks(
    factories: dict[str, Callable[[], Pipeline]],
    request: SampleRequest,
    *,
    warmup: int = 1,
    runs: int = 3,
    baselines: dict[str, int] | None = None,
    progress=None,
) -> tuple[dict[str, Pipeline], dict[str, BackendStats]]:
    """Create each pipeline and warm it up (:func:`open_and_warm`; ``baselines``: the memory in use before the
    pipelines the caller created already), then time ``runs`` runs of each on the same inputs, alternating
    between pipelines so that machine noise hits all alike."""
    pipelines, stats = {}, {}
    for name, factory in factories.items():
        pipelines[name], stats[name] = open_and_warm(
            factory, request, warmup=max(1, warmup), baseline=(baselines or {}).get(name), progress=progress
        )
    for _ in range(runs):
        for name, p in pipelines.items():
            stats[name].results.append(p.run(request))
            if progress is not None:
                progress()
    return pipelines, stats


def summary(pipeline: Pipeline, stats: BackendStats, reference: BackendStats | None) -> dict:
    """:func:`run_summary` of the last run plus the timings of all runs (and the reference's, if any)."""
    last = stats.last
    out = {
        **run_summary(pipeline, last),
        "step_ms_per_count": {str(k): round(v, 3) for k, v in stats.step_ms_per_count().items()},
        "batch_seconds": round(stats.batch_seconds(), 4),
        "images_per_second": round(stats.images_per_second(), 4),
        "peak_memory_bytes": stats.peak_memory_bytes,
        "warmup_seconds": round(stats.warmup_seconds, 3) if stats.warmup_seconds is not None else None,
        "runtime_overhead_fraction": round(stats.overhead_fraction(), 5),
        "runs": len(stats.results),
    }
    if reference is not None:
        out["reference_backend"] = reference.backend
        out["reference_batch_seconds"] = round(reference.batch_seconds(), 4)
        out["speedup_vs_reference"] = round(reference.batch_seconds() / stats.batch_seconds(), 3)
        diff = (stats.last.latents - reference.last.latents).abs().max().item()
        scale = reference.last.latents.abs().max().item()
        out["max_rel_diff_vs_reference"] = diff / max(scale, 1e-12)
    return out
