"""What a sampling run leaves behind: the environment it ran in, ``report.json`` and the step-latency plot.

Torch-free (the base install's ``medexport sample`` writes the same report); the plot needs matplotlib (the
``build`` extra) and is skipped with one line saying so where it is missing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import statistics
import sys
from pathlib import Path

from ..core.files import replacing, write_json
from ..core.sampling import SampleResult
from ..version import __version__

log = logging.getLogger(__name__)


def cpu_flags() -> str:
    """The CPU's vector extensions that decide matrix-product speed (AVX2, AVX-512, VNNI, bf16, AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    keep = ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
    return " ".join(f for f in flags if f in keep)


def environment(device) -> dict:
    """Versions, CPU and device of a run; ``device`` a torch device or its name ("cpu" for the torch-free
    runtime, where torch is absent or not loaded: its version and threads are then None)."""
    import onnxruntime

    torch = sys.modules.get("torch")  # loaded by a torch pipeline; the torch-free runtime never imports it
    env = {
        "medexport": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__ if torch else None,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch else None,
        "device": str(device),
    }
    if torch is not None and str(device).startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        env["tensorrt"] = None
    return env


def write_report(
    path: Path,
    settings: dict,
    env: dict,
    summaries: list[dict],
    result: SampleResult,
    reference: SampleResult | None = None,
    extra: dict | None = None,
) -> Path:
    data = {
        "settings": settings,
        "environment": env,
        "summary": summaries[0] if summaries else {},
        "summaries": summaries,
        **(extra or {}),
        "trace": result.trace_dicts(),
    }
    if reference is not None:
        data["reference_trace"] = reference.trace_dicts()
    return write_json(path, data)


def run_summary(pipeline, result: SampleResult) -> dict:
    """What one run did: the report's summary of a plain ``sample`` (a benchmark's summary extends it).
    ``pipeline``: a :class:`~medexport.Pipeline` or a :class:`~medexport.lite.LitePipeline`."""
    steps = result.step_ms()
    return {
        "backend": pipeline.backend,
        "images": len(result.latents),
        "seconds": round(result.seconds, 4),
        "median_step_ms": round(statistics.median(ms for _, ms in steps.values()), 3),
        "step_ms_after_switch": {str(s): round(steps[s][1], 3) for s in result.switch_steps()},
        "steps_per_count": {str(k): v for k, v in result.steps_per_count().items()},
        "evaluations": len(result.trace),
        "gflops_per_image": round(pipeline.flops_per_image(result) / 1e9, 3),
    }


def can_plot(what: str) -> bool:
    """Whether matplotlib is here; where not, log one line naming the extra that draws ``what``."""
    try:
        if importlib.util.find_spec("matplotlib") is not None:
            return True
    except (ImportError, ValueError):  # an import hook refusing it, or a broken install: not usable
        pass
    log.warning('%s skipped: drawing it needs matplotlib (pip install -e ".[build]" from a checkout)', what)
    return False


def plot_trace(path: Path, results: dict[str, SampleResult]) -> Path | None:
    """Step latency over the trajectory, one panel per backend, coloured by mediator count; None (and one line
    saying so) without matplotlib."""
    if not can_plot(f"the step-latency plot {path}"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    counts = sorted({e.mediators for r in results.values() for e in r.trace})
    colours = {n: plt.cm.viridis(i / max(1, len(counts) - 1)) for i, n in enumerate(counts)}
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.8 * len(results)), sharex=True, squeeze=False)
    for ax, (backend, r) in zip(axes[:, 0], results.items()):
        steps = r.step_ms()
        median = statistics.median(ms for _, ms in steps.values())
        switches = r.switch_steps()
        ax.axhline(median, color="0.5", linewidth=0.8, linestyle=":", zorder=1, label=f"median {median:.1f} ms")
        for s in switches:  # the step after a switch: as fast as the others once every engine is warmed
            ax.axvline(s - 0.5, color="0.7", linewidth=0.8, linestyle="--", zorder=1)
        for n in counts:
            xs = [s for s, (m, _) in sorted(steps.items()) if m == n]
            ys = [steps[s][1] for s in xs]
            if xs:
                ax.scatter(xs, ys, s=14, color=colours[n], label=f"{n} mediators", zorder=3)
        ax.set_ylabel("step latency (ms)")
        after = [steps[s][1] for s in switches]
        ax.set_title(
            f"{backend}: {len(r.latents)} images, {r.seconds:.2f} s"
            + (
                f"; steps after a switch {', '.join(f'{ms:.0f}' for ms in after)} ms, median step {median:.0f} ms"
                if after
                else ""
            ),
            fontsize=10,
        )
        ax.set_ylim(bottom=0, top=1.15 * max(ms for _, ms in steps.values()))
        ax.set_xlim(-0.5, max(steps) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("denoising step")
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
