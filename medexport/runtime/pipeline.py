"""``medexport.Pipeline``: sampling with one runner per mediator count, switched across denoising steps.

The pipeline owns the runners (any backend), wraps them into the sampler's velocity with classifier-free
guidance as the reference does it, lets the schedule pick the mediator count per step, and records every
model evaluation (step, t, mediator count, backend, wall time) in a trace.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import replacing
from ..backend import Runner, TorchRunner
from ..errors import BackendUnavailableError, ConfigError, SamplingError
from ..model import ModelConfig, forward_flops, load_checkpoint
from ..model.mediator_dit import MediatorDiT, guide
from .defaults import SamplingDefaults
from .request import SampleRequest, image_seed
from .samplers import RowGenerators, SamplerSettings, StepInfo, sample
from .schedule import FixedSchedule, Schedule, parse_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceEntry:
    """One model evaluation: which step, at which t, on which engine, how long (ms, device-timed on GPU)."""

    step: int
    t: float
    mediators: int
    backend: str
    ms: float
    batch: int


@dataclass
class SampleResult:
    """Final latents (B, C, S, S) of the conditional half, and the trace of every model evaluation."""

    latents: Tensor
    trace: list[TraceEntry]
    seconds: float
    settings: dict = field(default_factory=dict)

    def steps_per_count(self) -> dict[int, int]:
        """Distinct denoising steps served by each mediator count."""
        steps: dict[int, set] = {}
        for e in self.trace:
            steps.setdefault(e.mediators, set()).add(e.step)
        return {n: len(s) for n, s in sorted(steps.items())}

    def engine_ms(self) -> float:
        return sum(e.ms for e in self.trace)

    def trace_dicts(self) -> list[dict]:
        return [{"step": e.step, "t": e.t, "mediators": e.mediators, "backend": e.backend, "ms": e.ms,
                 "batch": e.batch} for e in self.trace]


class Pipeline:
    """Runners for several mediator counts of one model, and sampling across them.

    Build one with :meth:`from_bundle` (deployed engines) or :meth:`from_checkpoints` (PyTorch, no export).
    """

    def __init__(self, runners: dict[int, Runner], config: ModelConfig, *, defaults: SamplingDefaults | None = None,
                 data: dict | None = None):
        """``defaults``: the sampling settings used where a call gives none; ``data``: what the model generates
        (a bundle's ``data`` record: pixel space, data set, class names), None for latent models."""
        if not runners:
            raise ConfigError("a pipeline needs at least one runner")
        self.defaults = defaults or SamplingDefaults()
        self.data = data
        self.runners = dict(sorted(runners.items()))
        self.config = config  # shared architecture; config.mediators is that of the first runner
        self.backend = next(iter(self.runners.values())).backend
        self.device = torch.device(next(iter(self.runners.values())).device)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, path: str | os.PathLike, backend: str = "auto", device: str | None = None,
                    threads: int | None = None) -> Pipeline:
        """Runners for every count of a built bundle.

        ``backend``: "auto" (TensorRT where the bundle has runnable plans, else ONNX Runtime), "tensorrt",
        "onnxruntime", or "torch" (the PyTorch models the engines were built from: the reference).
        ``threads``: CPU threads of each ONNX Runtime session (default: ONNX Runtime's, all cores).
        """
        from ..backend import registry
        from ..bundle import engine_runner, open_bundle, runnable_here

        check_device(device)
        bundle = open_bundle(path)
        counts = bundle.counts
        if backend == "torch":
            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            runners = {n: TorchRunner(bundle.torch_model(n), device=dev) for n in counts}
            return cls(runners, bundle.config(counts[0]), defaults=bundle.sampling_defaults, data=bundle.data)
        if backend == "auto":  # the first of the registry's preference whose engines all run here
            backend = next((name for name in registry.PREFERENCE
                            if all(name in bundle.backends(n) and runnable_here(bundle.engine(n, name), name)[0]
                                   for n in counts)), registry.PREFERENCE[-1])
        for n in counts:
            if backend not in bundle.backends(n):
                raise BackendUnavailableError(f"bundle {path} has no {backend} engine for {n} mediators (it has "
                                              f"{', '.join(bundle.backends(n))}): rebuild it with --backend {backend}")
            ok, why = runnable_here(bundle.engine(n, backend), backend)
            if not ok:
                raise BackendUnavailableError(f"the {backend} engine for {n} mediators cannot run here: {why}")
        shared = registry.get(backend).shared_state()
        runners = {n: engine_runner(bundle, n, backend, shared=shared, device=device, threads=threads)
                   for n in counts}
        return cls(runners, bundle.config(counts[0]), defaults=bundle.sampling_defaults, data=bundle.data)

    @classmethod
    def from_checkpoints(cls, checkpoints: dict[int, str | os.PathLike], *, device: str | None = None,
                         weights: str = "ema", precision: str = "fp32", cuda_graph: bool = False) -> Pipeline:
        """PyTorch runners straight from checkpoints, one per mediator count (no export needed)."""
        models = {}
        for n, path in checkpoints.items():
            model = load_checkpoint(path, weights=weights)
            if model.config.mediators != n:
                raise ConfigError(f"{path} holds a {model.config.mediators}-mediator model, not {n}")
            models[n] = model
        return cls.from_models(models, device=device, precision=precision, cuda_graph=cuda_graph)

    @classmethod
    def from_models(cls, models: dict[int, MediatorDiT] | list[MediatorDiT], *, device: str | None = None,
                    precision: str = "fp32", cuda_graph: bool = False) -> Pipeline:
        check_device(device)
        if isinstance(models, (list, tuple)):
            models = {m.config.mediators: m for m in models}
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        configs = {n: m.config for n, m in models.items()}
        first = next(iter(configs.values()))
        for n, c in configs.items():
            if c.with_mediators(first.mediators) != first:
                raise ConfigError(f"the {n}-mediator model has another architecture than the others")
        return cls({n: TorchRunner(m, device=dev, precision=precision, cuda_graph=cuda_graph)
                    for n, m in models.items()}, first)

    @property
    def counts(self) -> list[int]:
        return list(self.runners)

    @property
    def precision(self) -> str:
        """The runners' precision ("fp32", "int8", ...), or "mixed"."""
        precisions = {r.precision for r in self.runners.values()}
        return precisions.pop() if len(precisions) == 1 else "mixed"

    # -- sampling -----------------------------------------------------------------------------------------
    def sample(self, labels, *, noise: Tensor | None = None, seed: int | None = None, sampler: str | None = None,
               method: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
               cfg_channels: int | str | None = None, schedule: Schedule | str | None = None,
               last_step: str | None = "mean", last_step_size: float = 0.04, atol: float = 1e-6, rtol: float = 1e-3,
               check_finite: bool = True) -> SampleResult:
        """Generate latents (or, for a pixel-space model, images in [-1, 1]) for ``labels``.

        The keyword form of :meth:`run`: the arguments are those of :class:`SampleRequest` (see there), plus
        ``noise``, the initial state (B, C, S, S), drawn from ``seed`` when omitted, and ``schedule``, which may
        also be a :class:`Schedule` object. Settings left as None come from :attr:`defaults`.
        """
        sched_obj = schedule if isinstance(schedule, Schedule) else None
        request = SampleRequest(labels, seed=seed, sampler=sampler, method=method, steps=steps, cfg_scale=cfg_scale,
                                cfg_channels=cfg_channels, schedule=None if sched_obj else schedule,
                                last_step=last_step, last_step_size=last_step_size, atol=atol, rtol=rtol,
                                check_finite=check_finite)
        return self.run(request, noise=noise, schedule=sched_obj)

    def run(self, request: SampleRequest, *, noise: Tensor | None = None, schedule: Schedule | None = None
            ) -> SampleResult:
        """Run one :class:`SampleRequest`. With guidance the state is doubled here ([x; x], labels [y; null]),
        as the reference does. ``schedule`` (an object) replaces the request's text schedule."""
        chosen = self.defaults.override(sampler=request.sampler, method=request.method, steps=request.steps,
                                        cfg_scale=request.cfg_scale, cfg_channels=request.cfg_channels,
                                        schedule=request.schedule)
        cfg_scale = chosen.cfg_scale
        cfg_channels = None if chosen.cfg_channels == "all" else int(chosen.cfg_channels)
        settings = SamplerSettings(sampler=chosen.sampler, method=chosen.method, steps=chosen.steps,
                                   last_step=request.last_step, last_step_size=request.last_step_size,
                                   atol=request.atol, rtol=request.rtol)
        sched = self._schedule(schedule if schedule is not None else chosen.schedule)
        if sched.adaptive and settings.num_model_steps is None:
            raise SamplingError("an adaptive schedule needs a fixed-step sampler (not dopri5): use "
                                "--method euler/heun or a fixed schedule")
        if cfg_channels is not None:
            cfg_channels = min(cfg_channels, self.config.in_channels)  # 3 on a 1-channel model guides it all
        y = self._labels(request.labels)
        seed = request.seed
        B, c = len(y), self.config
        guided = cfg_scale > 1.0
        shape = (c.in_channels, c.input_size, c.input_size)
        if request.image_seeds is not None:  # each image's noise from its own seed alone
            def own(s: int, stream: int) -> torch.Generator:
                return torch.Generator().manual_seed(image_seed(s, 0, stream))

            generator = RowGenerators([own(s, 1) for s in request.image_seeds]
                                      + ([own(s, 2) for s in request.image_seeds] if guided else []))
            if noise is None:
                noise = torch.stack([torch.randn(shape, generator=own(s, 0)) for s in request.image_seeds])
        else:
            generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        if noise is None:
            noise = torch.randn(B, *shape, generator=generator)
        elif tuple(noise.shape) != (B, *shape):
            raise SamplingError(f"noise must be {(B, *shape)} for {B} labels, got {tuple(noise.shape)}")
        x0 = noise.to(self.device, torch.float32)
        y = y.to(self.device)
        if guided:  # the reference: z = [z; z], y = [y; null]
            x0 = torch.cat([x0, x0])
            y = torch.cat([y, torch.full_like(y, c.num_classes)])
        trace: list[TraceEntry] = []
        per_sample = getattr(sched, "per_sample", False)
        sched.reset(x0[:B] if per_sample else x0)
        timer = _Timer(self.device)
        finite = _FiniteCheck(self.device, request.check_finite)

        def velocity(x: Tensor, t: Tensor, step: StepInfo) -> Tensor:
            counts = sched.models_for(step) if per_sample else [sched.model_for(step)] * B
            if len(set(counts)) == 1:
                return self._evaluate(counts[0], x, t, y, cfg_scale, cfg_channels, step, trace, timer, finite)
            out = torch.empty_like(x)
            for n in sorted(set(counts)):
                rows = [i for i, k in enumerate(counts) if k == n]
                idx = torch.tensor(rows + [r + B for r in rows] if guided else rows, device=x.device)
                out[idx] = self._evaluate(n, x[idx], t[idx], y[idx], cfg_scale, cfg_channels, step, trace, timer,
                                          finite)
            return out

        def on_step(step: StepInfo, x: Tensor) -> None:
            sched.observe(step, x[:B] if per_sample else x)

        start = time.perf_counter()
        x = sample(velocity, x0, settings, generator=generator, on_step=on_step)
        finite.flush()
        timer.flush(trace)
        seconds = time.perf_counter() - start
        run_settings = {**asdict(settings), "cfg_scale": cfg_scale, "cfg_channels": chosen.cfg_channels,
                        "schedule": str(sched), "seed": seed, "labels": y[:B].tolist(), "backend": self.backend}
        return SampleResult(x[:B].float().cpu(), trace, seconds, run_settings)

    def _evaluate(self, n: int, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float, channels: int | None,
                  step: StepInfo, trace: list, timer: _Timer, finite: _FiniteCheck) -> Tensor:
        runner = self.runners[n]
        guided = cfg_scale > 1.0
        if guided:  # forward_with_cfg: the conditional half, duplicated
            half = x[: len(x) // 2]
            x = torch.cat([half, half])
        start = timer.start()
        out = runner(x, t, y)
        timer.stop(start, trace, step, n, runner.backend, len(x))
        finite.check(out, runner.backend, n, step)
        return guide(out, cfg_scale, channels) if guided else out

    def _schedule(self, schedule) -> Schedule:
        if schedule is None:
            sched: Schedule = FixedSchedule.static(max(self.counts))
        elif isinstance(schedule, str):
            sched = parse_schedule(schedule)
        else:
            sched = schedule
        sched.validate_against(self.counts)
        return sched

    def _labels(self, labels: tuple[int, ...]) -> Tensor:
        """The request's labels (integers, checked by :class:`SampleRequest`) as a tensor, range-checked."""
        y = torch.tensor(labels, dtype=torch.int64)
        bad = [int(v) for v in y if not 0 <= v < self.config.num_classes]
        if bad:
            raise SamplingError(f"labels {bad} are outside 0..{self.config.num_classes - 1} (the model has "
                                f"{self.config.num_classes} classes; the null class {self.config.num_classes} is "
                                f"added by guidance)")
        return y

    # -- accounting ---------------------------------------------------------------------------------------
    def flops_per_image(self, result: SampleResult) -> float:
        """Multiply-adds per generated image under the run's schedule (guidance doubles each evaluation)."""
        per_count = {n: forward_flops(self.config.with_mediators(n)) for n in self.counts}
        images = len(result.latents)
        return sum(per_count[e.mediators] * e.batch for e in result.trace) / images


@dataclass
class BatchedSamples:
    """What :func:`sample_in_batches` made: the samples in label order and their cost."""

    latents: Tensor
    seconds: float  # sampling time, all batches
    flops_per_image: float
    steps_per_count: dict[int, int]  # steps each count served (the most of any batch)
    schedule: str  # the schedule that ran, in its canonical text


def sample_in_batches(pipe: Pipeline, labels: list[int], sampling: SamplingDefaults, *, seed: int = 0,
                      batch: int = 100, on_batch=None) -> BatchedSamples:
    """Sample ``labels`` with ``sampling`` in batches of ``batch``; batch b is seeded with ``seed + b``, so runs
    with other settings (another schedule, say) see the same noise and labels. ``on_batch(k)`` after each."""
    kwargs = sampling.pipeline_kwargs()
    images, flops, seconds, steps = [], 0.0, 0.0, {}
    for b, start in enumerate(range(0, len(labels), batch)):
        chunk = labels[start:start + batch]
        t0 = time.perf_counter()
        result = pipe.sample(chunk, seed=seed + b, **kwargs)
        seconds += time.perf_counter() - t0
        images.append(result.latents)
        flops += pipe.flops_per_image(result) * len(chunk)
        for n, k in result.steps_per_count().items():
            steps[n] = max(steps.get(n, 0), k)
        if on_batch:
            on_batch(len(chunk))
    return BatchedSamples(torch.cat(images), seconds, flops / len(labels), dict(sorted(steps.items())),
                          str(result.settings["schedule"]))


def check_device(device: str | None) -> None:
    """Refuse a device that does not exist here, rather than running somewhere else without a word."""
    if device is None:
        return
    from ..errors import BackendUnavailableError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use cpu or cuda (cuda:N for a particular GPU)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported: use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} was asked for, but no CUDA GPU is visible here: use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device {device!r} does not exist: this machine has "
                                          f"{torch.cuda.device_count()} CUDA GPU(s)")


class _FiniteCheck:
    """Stops a run whose engine outputs NaN or inf, naming the step and the engine.

    On the CPU each output is checked at once. On a GPU an immediate check would wait for the device at every
    evaluation, so the checks are queued as device-side flags and read together at the end of the run (one
    wait); the first bad evaluation is reported all the same.
    """

    def __init__(self, device: torch.device, enabled: bool):
        self.enabled, self.deferred = enabled, device.type == "cuda"
        self.flags: list[Tensor] = []
        self.where: list[tuple[str, int, StepInfo]] = []

    def check(self, out: Tensor, backend: str, n: int, step: StepInfo) -> None:
        if not self.enabled:
            return
        ok = torch.isfinite(out).all()
        if self.deferred:
            self.flags.append(ok)
            self.where.append((backend, n, step))
        elif not ok:
            self._fail(backend, n, step)

    def flush(self) -> None:
        if self.flags:
            oks = torch.stack(self.flags).cpu()
            if not oks.all():
                self._fail(*self.where[int((~oks).nonzero()[0])])

    @staticmethod
    def _fail(backend: str, n: int, step: StepInfo):
        raise SamplingError(f"the {backend} engine for {n} mediators produced NaN/inf at step {step.index} "
                            f"(t={step.t:.4f}): rebuild it in fp32 or check the model")


class _Timer:
    """Wall time per evaluation: perf_counter on CPU, CUDA events (read once at the end) on GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[int, object, object]] = []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, start, trace: list, step: StepInfo, n: int, backend: str, batch: int) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((len(trace), start, end))
            ms = float("nan")  # filled in by flush(), without a host sync per step
        else:
            ms = (time.perf_counter() - start) * 1e3
        trace.append(TraceEntry(step.index, float(step.t), n, backend, ms, batch))

    def flush(self, trace: list) -> None:
        if not self.pending:
            return
        torch.cuda.synchronize()
        for i, start, end in self.pending:
            e = trace[i]
            trace[i] = TraceEntry(e.step, e.t, e.mediators, e.backend, start.elapsed_time(end), e.batch)
        self.pending.clear()


def latents_to_file(latents: Tensor, path: str | Path) -> Path:
    import numpy as np

    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, latents.numpy())
    return path
