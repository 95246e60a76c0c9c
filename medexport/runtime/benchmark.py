"""Benchmarking sampling runs: the deployed engines against the PyTorch reference on the same inputs, the
summary table, ``report.json`` and the latency plot."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..version import __version__
from .pipeline import Pipeline, SampleResult


@dataclass
class BackendStats:
    """Timed runs of one pipeline (one backend)."""

    backend: str
    results: list[SampleResult] = field(default_factory=list)
    peak_memory_bytes: int | None = None  # what the pipeline added: weights, sessions, activations

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


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the process's peak resident set (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_memory(device: torch.device) -> int:
    """Memory in use now: allocated device memory (CUDA) or the process's resident set (CPU)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_bytes("VmRSS") or 0


def peak_memory(device: torch.device) -> int:
    """Peak device memory (CUDA) or peak resident memory of the process (CPU) since the last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024)


def run_benchmarks(factories: dict[str, Callable[[], Pipeline]], sample_kwargs: dict, *, warmup: int = 1,
                   runs: int = 3, baselines: dict[str, int] | None = None,
                   progress=None) -> tuple[dict[str, Pipeline], dict[str, BackendStats]]:
    """Create each pipeline and warm it up (measuring its memory: peak during warm-up minus what was in use
    before it was created, from ``baselines`` for pipelines the caller created already), then time ``runs``
    runs of each on the same inputs, alternating between pipelines so that machine noise hits all alike."""
    pipelines, stats = {}, {}
    for name, factory in factories.items():
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        base = (baselines or {}).get(name)
        base = current_memory(device) if base is None else base
        p = pipelines[name] = factory()
        reset_peak_memory(p.device)
        for _ in range(max(1, warmup)):
            p.sample(**sample_kwargs)
            if progress is not None:
                progress()
        stats[name] = BackendStats(p.backend, peak_memory_bytes=max(0, peak_memory(p.device) - base))
        extra = [r.memory_bytes() for r in p.runners.values()]
        if p.backend == "tensorrt" and all(e is not None for e in extra):
            stats[name].peak_memory_bytes += max(extra)  # the shared activation buffer, outside torch's allocator
    for _ in range(runs):
        for name, p in pipelines.items():
            stats[name].results.append(p.sample(**sample_kwargs))
            if progress is not None:
                progress()
    return pipelines, stats


def summary(pipeline: Pipeline, stats: BackendStats, reference: BackendStats | None) -> dict:
    last = stats.last
    out = {
        "backend": stats.backend,
        "images": len(last.latents),
        "steps_per_count": {str(k): v for k, v in last.steps_per_count().items()},
        "evaluations": len(last.trace),
        "step_ms_per_count": {str(k): round(v, 3) for k, v in stats.step_ms_per_count().items()},
        "batch_seconds": round(stats.batch_seconds(), 4),
        "images_per_second": round(stats.images_per_second(), 4),
        "peak_memory_bytes": stats.peak_memory_bytes,
        "gflops_per_image": round(pipeline.flops_per_image(last) / 1e9, 3),
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


def environment(device: torch.device) -> dict:
    import onnxruntime

    env = {"medexport": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "onnxruntime": onnxruntime.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        env["tensorrt"] = None
    return env


def write_report(path: Path, settings: dict, env: dict, summaries: list[dict], result: SampleResult,
                 reference: SampleResult | None = None, extra: dict | None = None) -> Path:
    data = {"settings": settings, "environment": env, "summary": summaries[0] if summaries else {},
            "summaries": summaries, **(extra or {}), "trace": result.trace_dicts()}
    if reference is not None:
        data["reference_trace"] = reference.trace_dicts()
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def plot_trace(path: Path, results: dict[str, SampleResult]) -> Path:
    """Step latency over the trajectory, one panel per backend, coloured by mediator count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    counts = sorted({e.mediators for r in results.values() for e in r.trace})
    colours = {n: plt.cm.viridis(i / max(1, len(counts) - 1)) for i, n in enumerate(counts)}
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.8 * len(results)), sharex=True, squeeze=False)
    for ax, (backend, r) in zip(axes[:, 0], results.items()):
        steps: dict[int, tuple[int, float]] = {}
        for e in r.trace:
            n, ms = steps.get(e.step, (e.mediators, 0.0))
            steps[e.step] = (e.mediators, ms + e.ms)
        for n in counts:
            xs = [s for s, (m, _) in sorted(steps.items()) if m == n]
            ys = [steps[s][1] for s in xs]
            if xs:
                ax.scatter(xs, ys, s=14, color=colours[n], label=f"{n} mediators", zorder=3)
        ax.set_ylabel("step latency (ms)")
        ax.set_title(f"{backend}: {len(r.latents)} images, {r.seconds:.2f} s")
        ax.set_ylim(bottom=0, top=1.15 * max(ms for _, ms in steps.values()))
        ax.set_xlim(-0.5, max(steps) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("denoising step")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
