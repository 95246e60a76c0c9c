"""A mediator pipeline against its vanilla twin's, measured in one process: the numbers of ``medexport bench``.

Both pipelines are opened and warmed first (their open and warm-up times reported apart: the start-up a server
pays), then timed alternately so that machine noise hits both alike:

- **end to end**: images per second of a sampling run under the schedule against the same request on the
  vanilla pipeline, with the FLOPs-predicted ratio beside the measured one, peak memory and model FLOP
  utilisation (model FLOPs per second over the measured matmul rate);
- **ceilings**: the device's dense matmul rate (in the run's precision) and copy bandwidth, measured here;
- **per forward**: the median milliseconds of one engine call of every count and of the vanilla model at one
  batch, the ratios, TFLOP/s and model FLOP utilisation;
- **attention part** (PyTorch runners): one block's attention module alone, its two projections alone, the part
  between them as the difference, and that part's bandwidth as a share of the copy bandwidth (:mod:`.attention`);
- **profile** (asked for): one forward of the largest count against the vanilla model, op by op
  (:mod:`.profile`).

:func:`compare_pipelines` takes two callables that open the pipelines, so the same measurement serves bundles
(:func:`medexport.bench.run_bench`) and models made in memory (``benchmarks/bench_gpu_pipeline.py``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..backend.inductor.runner import CompiledRunner
from ..backend.pytorch.runner import TorchRunner
from ..core.config import FULL, count_name
from ..core.request import SampleRequest
from ..errors import ConfigError
from ..model import forward_flops
from ..model.engine_graph import TORCH_DTYPES
from ..runtime.benchmark import BackendStats, open_and_warm
from ..runtime.memory import available_memory
from ..runtime.pipeline import Pipeline
from .attention import attention_row
from .device import measure_ceilings, significant
from .profile import profile_pair

#: Model fields a mediator model and its vanilla twin share (all but the attention and the mediator count).
SHARED_FIELDS = (
    "depth",
    "hidden_size",
    "num_heads",
    "patch_size",
    "input_size",
    "in_channels",
    "num_classes",
    "learn_sigma",
    "mlp_ratio",
)


@dataclass(frozen=True)
class BenchSettings:
    """How a comparison is measured (``medexport bench``'s options of the same names).

    Attributes:
        batch: engine batch of the per-forward and attention rows; None: the request's images, doubled under
            guidance (what one sampling step runs).
        rounds: timed rounds of per-forward calls, one call of every engine per round.
        runs: timed end-to-end runs of each pipeline, alternating.
        warmup: untimed end-to-end runs of each before timing (the engines are opened and warmed before that,
            apart: CUDA graphs captured, compiled graphs compiled).
        profile: also profile one forward of the largest count against the vanilla model (PyTorch runners).
        profile_rows: rows of the profile table.
        ceilings: measure the matmul rate and copy bandwidth (the denominators of utilisation and bandwidth).
    """

    batch: int | None = None
    rounds: int = 5
    runs: int = 2
    warmup: int = 1
    profile: bool = False
    profile_rows: int = 15
    ceilings: bool = True

    def __post_init__(self) -> None:
        for name, low in (("rounds", 1), ("runs", 1), ("warmup", 0), ("profile_rows", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.batch is not None and (
            isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1
        ):
            raise ConfigError(f"batch must be a positive integer or None, got {self.batch!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ForwardTimes:
    """Per-forward wall times (ms) of each engine, measured round by round in alternation."""

    ms: dict[int, list[float]]

    def median(self, n: int) -> float:
        return statistics.median(self.ms[n])


def time_forwards(
    runners: dict[int, object],
    config,
    batch: int,
    *,
    rounds: int,
    warmup: int = 1,
    device: torch.device = torch.device("cpu"),
    progress=None,
) -> ForwardTimes:
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


def forward_bytes(config, batch: int) -> int:
    """A lower estimate of the memory one forward of the vanilla twin of ``config`` takes at ``batch`` (float32):
    its input and output, one block's activations (qkv, attention output, MLP hidden) and one head's attention
    scores per sample (an engine that materialises them holds at least that). What bench checks a batch against
    before it times anything."""
    tokens, hidden = config.num_tokens, config.hidden_size
    image = config.in_channels * config.input_size * config.input_size
    per_sample = 2 * image + tokens * hidden * (4 + config.mlp_ratio) + tokens * tokens
    return int(4 * batch * per_sample)


def check_forward_batch(batch: int | None, config, device: torch.device) -> None:
    """Refuse, before anything is opened or timed, a per-forward batch whose inputs and activations alone would
    not fit in the memory ``device`` has available now; the message names the largest batch that would."""
    if batch is None:
        return
    need, free = forward_bytes(config, batch), available_memory(device)
    if free is not None and need > free:
        fits = max(1, batch * free // max(need, 1) // 2)  # half of what is free: the engines need room too
        raise ConfigError(
            f"--forward-batch {batch} needs at least {need / 2**30:.1f} GiB on {device.type} for one "
            f"forward of the vanilla model ({config.num_tokens} tokens, hidden {config.hidden_size}), "
            f"and {free / 2**30:.1f} GiB is available: use --forward-batch {fits} or less "
            f"(nothing was timed)"
        )


def torch_runners(pipe: Pipeline) -> bool:
    """Whether every runner of ``pipe`` runs a PyTorch model (what the attention rows and the profile time)."""
    return all(isinstance(r, TorchRunner) for r in pipe.runners.values())


def compare_pipelines(
    open_mine: Callable[[], Pipeline],
    open_theirs: Callable[[Pipeline], Pipeline],
    request: SampleRequest,
    settings: BenchSettings | None = None,
    *,
    progress=None,
) -> dict:
    """Measure the mediator pipeline ``open_mine()`` against the vanilla one ``open_theirs(mine)`` (which runs
    the same backend on the same device); the report (a JSON-ready dict, see the module docstring)."""
    settings = settings or BenchSettings()
    # The vanilla pipeline runs its one model: the same request without the schedule, which names mediator counts.
    vanilla_request = SampleRequest.from_dict({**request.to_dict(), "schedule": None})
    opened: dict[str, float] = {}

    def timed(name: str, factory: Callable[[], Pipeline]) -> Callable[[], Pipeline]:
        def make() -> Pipeline:
            t0 = time.perf_counter()
            pipe = factory()
            opened[name] = time.perf_counter() - t0
            return pipe

        return make

    # Each pipeline is opened, its engines warmed and ``warmup`` untimed runs made, with its peak memory measured
    # from what was in use before it existed (the other's engines stay resident, as a server holds them).
    mine, ours = open_and_warm(timed("medexport", open_mine), request, warmup=settings.warmup)
    if settings.profile and not torch_runners(mine):
        raise ConfigError(
            f"--profile records PyTorch's ops and kernels, and the {mine.backend} engines run "
            f"outside PyTorch: profile with --backend torch or --backend inductor"
        )
    theirs, base = open_and_warm(timed("vanilla", lambda: open_theirs(mine)), vanilla_request, warmup=settings.warmup)
    for _ in range(settings.runs):  # alternating run by run
        ours.results.append(mine.run(request))
        base.results.append(theirs.run(vanilla_request))
        if progress is not None:
            progress()
    device, cfg = mine.device, mine.config
    chosen = request.settings.over(mine.defaults).resolved()
    batch = settings.batch or len(request.labels) * (2 if chosen.cfg_scale != 1.0 else 1)
    ceilings = measure_ceilings(device, TORCH_DTYPES.get(mine.precision, torch.float32)) if settings.ceilings else None
    peak_tflops = ceilings.matmul_tflops if ceilings else None

    runners = {**mine.runners, FULL: theirs.runners[FULL]}
    forwards = time_forwards(runners, cfg, batch, rounds=settings.rounds, warmup=1, device=device, progress=progress)
    full_flops = forward_flops(theirs.config)
    vanilla_ms = forwards.median(FULL)
    forward_rows = []
    for n in runners:
        flops = forward_flops(cfg.with_mediators(n))
        ms = forwards.median(n)
        tflops = 2 * flops * batch / (ms * 1e-3) / 1e12  # forward_flops counts multiply-adds
        forward_rows.append(
            {
                "mediators": count_name(n),
                "ms": round(ms, 3),
                "ms_all": [round(v, 3) for v in forwards.ms[n]],
                "gflops": round(flops / 1e9, 4),
                "predicted_ratio": round(full_flops / flops, 4),
                "measured_ratio": round(vanilla_ms / ms, 4),
                "tflops": significant(tflops),
                "mfu": significant(tflops / peak_tflops) if peak_tflops else None,
            }
        )

    attention = None
    if torch_runners(mine) and torch_runners(theirs):
        copy_gbps = ceilings.copy_gbps if ceilings else None
        attention = [attention_row(r.model, batch, device, copy_gbps) for r in runners.values()]
    profile = None
    if settings.profile:
        largest = max(mine.runners)
        x, t, y = _inputs(cfg, batch, device)
        ours_fn, base_fn = _profiled(mine.runners[largest]), _profiled(theirs.runners[FULL])
        profile = profile_pair(lambda: ours_fn(x, t, y), lambda: base_fn(x, t, y), device, rows=settings.profile_rows)
        profile.update({"mediators": count_name(largest), "batch": batch})

    ours_flops, base_flops = mine.flops_per_image(ours.last), theirs.flops_per_image(base.last)
    end_to_end = {
        "schedule": ours.last.settings.get("schedule"),
        "images": len(ours.last.latents),
        "steps_per_count": {count_name(k): v for k, v in ours.last.steps_per_count().items()},
        "medexport": _pipeline_row(ours, ours_flops, peak_tflops),
        "vanilla": _pipeline_row(base, base_flops, peak_tflops),
        "predicted_ratio": round(base_flops / ours_flops, 4),
        "measured_ratio": round(base.batch_seconds() / ours.batch_seconds(), 4),
    }
    return {
        "kind": "medexport-bench",
        "backend": mine.backend,
        "precision": mine.precision,
        "device": str(device),
        "model": {k: getattr(cfg, k) for k in SHARED_FIELDS},
        "tokens": cfg.num_tokens,
        "image_size": cfg.image_size if mine.data is None else cfg.input_size,
        "forward_batch": batch,
        "rounds": settings.rounds,
        "runs": settings.runs,
        "bench_settings": settings.to_dict(),
        "settings": chosen.to_dict(),
        "ceilings": ceilings.to_dict() if ceilings else None,
        "forward": forward_rows,
        "attention": attention,
        "end_to_end": end_to_end,
        "startup": _startup(opened, ours, base, mine, theirs),
        "profile": profile,
    }


def _profiled(runner):
    """What the profiler runs for one forward of ``runner``: a CUDA-graph runner's eager forward, which launches
    the very kernels its graphs replay (their device times are the same; the profiler sees them by name without
    looking inside a graph), else the runner as timed."""
    return runner.graph if getattr(runner, "cuda_graph", False) else runner


def _inputs(config, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    y = torch.randint(0, config.num_classes, (batch,), generator=g).to(device)
    return x, t, y


def _pipeline_row(stats: BackendStats, flops: float, peak_tflops: float | None) -> dict:
    images_per_second = stats.images_per_second()
    # guidance doubles each evaluation: flops_per_image already counts both halves
    tflops = 2 * flops * images_per_second / 1e12
    return {
        "batch_seconds": round(stats.batch_seconds(), 4),
        "images_per_second": round(images_per_second, 4),
        "gflops_per_image": significant(flops / 1e9),
        "tflops": significant(tflops),
        "mfu": significant(tflops / peak_tflops) if peak_tflops else None,
        "peak_memory_bytes": stats.peak_memory_bytes,
        "warmup_seconds": round(stats.warmup_seconds or 0.0, 3),
        "seconds_all": [round(r.seconds, 4) for r in stats.results],
    }


def _startup(
    opened: dict[str, float], ours: BackendStats, base: BackendStats, mine: Pipeline, theirs: Pipeline
) -> dict:
    """Open (runners made) and warm (every engine's first calls: graphs captured, compiled graphs compiled)
    seconds of each side, and what the compiled runners found in inductor's persistent cache."""
    out = {
        name: {"open_seconds": round(opened[name], 3), "warm_seconds": round(stats.warmup_seconds or 0.0, 3)}
        for name, stats in (("medexport", ours), ("vanilla", base))
    }
    compiled = [r for p in (mine, theirs) for r in p.runners.values() if isinstance(r, CompiledRunner)]
    if compiled:
        from ..backend.inductor.cache import cache_stats

        out["compile_cache"] = cache_stats()
    return out


__all__ = [
    "SHARED_FIELDS",
    "BenchSettings",
    "ForwardTimes",
    "check_forward_batch",
    "compare_pipelines",
    "forward_bytes",
    "time_forwards",
    "torch_runners",
]
