"""``medexport bench``: a mediator bundle against its vanilla twin, the full-attention engine a user would deploy
instead, built by the same exporter and backend at the same precision.

Everything is measured in one process, alternating between the engines round by round so that machine noise
hits all alike:

- **per forward**: the median milliseconds of one engine call at one batch, for every mediator count and the
  full-attention model, beside the ratio the FLOPs predict (full / mediator) and the measured one;
- **end to end**: images per second of a sampling run under the schedule against the same run on the vanilla
  engine (same request, same settings), with each pipeline's peak memory (all its engines resident, as a server
  holds them) and the time to open and warm them, which is reported apart.

:func:`run_bench` returns the report (a JSON-ready dict); :func:`plot_bench` draws it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.config import FULL, count_name
from ..core.files import replacing
from ..core.manifest import Manifest
from ..core.request import SampleRequest
from ..errors import BundleError
from ..model import forward_flops
from ..runtime.benchmark import open_and_warm
from ..runtime.pipeline import Pipeline

#: Model fields a mediator bundle and its twin must share (all but the attention and the mediator count).
_SHARED = ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "num_classes",
           "learn_sigma", "mlp_ratio")


def check_twin(bundle: Path, manifest: Manifest, vanilla: Path, twin: Manifest) -> None:
    """Refuse a pair that is not a mediator bundle and a vanilla twin of the same model at the same precision,
    saying what to build."""
    if manifest.is_full:
        raise BundleError(f"{bundle} is itself a vanilla (full-attention) bundle: bench a mediator bundle against "
                          f"it, `medexport bench MEDIATOR_BUNDLE --against {bundle}`")
    if not twin.is_full:
        raise BundleError(f"--against {vanilla} holds mediator counts "
                          f"({', '.join(map(str, twin.count_list))}), not a full-attention model: build the vanilla "
                          f"twin with `medexport build ... --attention full` and pass its folder")
    diff = [f"{k} {manifest.model.get(k)} vs {twin.model.get(k)}" for k in _SHARED
            if manifest.model.get(k) != twin.model.get(k)]
    if diff:
        raise BundleError(f"{vanilla} is not the vanilla twin of {bundle}: the models differ in {'; '.join(diff)}. "
                          f"Build the twin from the same model name and image size with --attention full")
    mine, theirs = manifest.build.get("precision"), twin.build.get("precision")
    if mine != theirs:
        raise BundleError(f"{bundle} holds {mine} engines and {vanilla} {theirs} ones: compare engines of one "
                          f"precision (build the twin with --precision {mine})")


@dataclass
class ForwardTimes:
    """Per-forward wall times (ms) of each engine, measured round by round in alternation."""

    ms: dict[int, list[float]]

    def median(self, n: int) -> float:
        return statistics.median(self.ms[n])


def time_forwards(runners: dict[int, object], config, batch: int, *, rounds: int, warmup: int = 1,
                  device: torch.device = torch.device("cpu"), progress=None) -> ForwardTimes:
    """Time one forward of every runner (keyed by count, FULL for the vanilla engine) on the same inputs,
    ``rounds`` times after ``warmup`` untimed rounds, one call of each per round."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    y = torch.randint(0, config.num_classes, (batch,), generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[int, list[float]] = {n: [] for n in runners}
    for i in range(warmup + rounds):
        for n, runner in runners.items():
            sync()
            t0 = time.perf_counter()
            runner(x, t, y)
            sync()
            if i >= warmup:
                times[n].append((time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress()
    return ForwardTimes(times)


def run_bench(bundle: Path, vanilla: Path, request: SampleRequest, *, backend: str = "auto",
              device: str | None = None, threads: int | None = None, batch: int | None = None, rounds: int = 5,
              runs: int = 2, warmup: int = 1, progress=None) -> dict:
    """Measure ``bundle`` against its vanilla twin ``vanilla`` (see the module docstring); the report.

    ``batch``: the engine batch of the per-forward rows (default: the request's, guidance doubling included).
    """
    manifest, twin = Manifest.read(bundle), Manifest.read(vanilla)
    check_twin(bundle, manifest, vanilla, twin)
    # The vanilla bundle runs its one model: the same request without the schedule, which names mediator counts.
    vanilla_request = SampleRequest.from_dict({**request.to_dict(), "schedule": None})
    # End to end first: each pipeline is created, its engines opened and warmed, and one untimed run made, with
    # its peak memory measured from what was in use before it existed (the other's engines stay resident).
    mine, ours = open_and_warm(lambda: Pipeline.from_bundle(bundle, backend=backend, device=device,
                                                            threads=threads), request, warmup=warmup)
    theirs, base = open_and_warm(lambda: Pipeline.from_bundle(vanilla, backend=mine.backend, device=str(mine.device),
                                                              threads=threads), vanilla_request, warmup=warmup)
    for _ in range(runs):  # alternating run by run
        ours.results.append(mine.run(request))
        base.results.append(theirs.run(vanilla_request))
        if progress is not None:
            progress()
    chosen = request.settings.over(mine.defaults).resolved()
    batch = batch or len(request.labels) * (2 if chosen.cfg_scale != 1.0 else 1)
    cfg = mine.config
    full_flops = forward_flops(theirs.config)
    runners = {**mine.runners, FULL: theirs.runners[FULL]}
    forwards = time_forwards(runners, cfg, batch, rounds=rounds, warmup=1, device=mine.device, progress=progress)
    vanilla_ms = forwards.median(FULL)
    forward_rows = []
    for n in runners:
        flops = forward_flops(cfg.with_mediators(n))
        forward_rows.append({"mediators": count_name(n), "ms": round(forwards.median(n), 3),
                             "ms_all": [round(v, 3) for v in forwards.ms[n]], "gflops": round(flops / 1e9, 4),
                             "predicted_ratio": round(full_flops / flops, 4),
                             "measured_ratio": round(vanilla_ms / forwards.median(n), 4)})
    ours_flops = mine.flops_per_image(ours.last)
    base_flops = theirs.flops_per_image(base.last)
    end_to_end = {
        "schedule": ours.last.settings.get("schedule"),
        "images": len(ours.last.latents),
        "steps_per_count": {count_name(k): v for k, v in ours.last.steps_per_count().items()},
        "medexport": _pipeline_row(ours, ours_flops),
        "vanilla": _pipeline_row(base, base_flops),
        "predicted_ratio": round(base_flops / ours_flops, 4),
        "measured_ratio": round(base.batch_seconds() / ours.batch_seconds(), 4),
    }
    return {"kind": "medexport-bench", "bundle": str(bundle), "vanilla": str(vanilla), "backend": mine.backend,
            "precision": mine.precision, "device": str(mine.device), "threads": threads,
            "model": {k: manifest.model.get(k) for k in _SHARED},
            "tokens": cfg.num_tokens, "image_size": cfg.image_size if manifest.data is None else cfg.input_size,
            "forward_batch": batch, "rounds": rounds, "runs": runs,
            "settings": chosen.to_dict(), "forward": forward_rows, "end_to_end": end_to_end}


def _pipeline_row(stats, flops: float) -> dict:
    return {"batch_seconds": round(stats.batch_seconds(), 4), "images_per_second": round(stats.images_per_second(), 4),
            "gflops_per_image": round(flops / 1e9, 3), "peak_memory_bytes": stats.peak_memory_bytes,
            "warmup_seconds": round(stats.warmup_seconds or 0.0, 3),
            "seconds_all": [round(r.seconds, 4) for r in stats.results]}


def plot_bench(path: Path, report: dict) -> Path:
    """Two panels: ms per forward of each count beside the vanilla engine, and measured against predicted
    speed-ups (per forward and end to end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["forward"]
    labels = [r["mediators"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = ["tab:gray" if lab == "full" else "tab:blue" for lab in labels]
    ax1.bar(labels, [r["ms"] for r in rows], color=colours)
    ax1.set_xlabel("mediators (full: the vanilla engine)")
    ax1.set_ylabel(f"ms per forward (batch {report['forward_batch']})")
    ax1.grid(axis="y", alpha=0.3)
    names = [r["mediators"] for r in rows if r["mediators"] != "full"] + ["schedule"]
    e2e = report["end_to_end"]
    predicted = [r["predicted_ratio"] for r in rows if r["mediators"] != "full"] + [e2e["predicted_ratio"]]
    measured = [r["measured_ratio"] for r in rows if r["mediators"] != "full"] + [e2e["measured_ratio"]]
    xs = range(len(names))
    ax2.bar([x - 0.2 for x in xs], predicted, width=0.4, label="FLOPs predict", color="tab:orange")
    ax2.bar([x + 0.2 for x in xs], measured, width=0.4, label="measured", color="tab:blue")
    ax2.axhline(1.0, color="0.3", linewidth=0.8)
    ax2.set_xticks(list(xs), names)
    ax2.set_ylabel("speed-up over the vanilla engine")
    ax2.legend(frameon=False, fontsize=8)
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{Path(report['bundle']).name} vs {Path(report['vanilla']).name}: {report['backend']} "
                 f"{report['precision']}, {report['tokens']} tokens, {report['threads'] or 'all'} threads",
                 fontsize=10)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


__all__ = ["ForwardTimes", "check_twin", "plot_bench", "run_bench", "time_forwards"]
