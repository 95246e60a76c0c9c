"""One sampling run over ``{mediator count: forward}``: guidance, the schedule, noise, the trace. Written once.

:class:`medexport.Pipeline` (torch arrays, runners of any backend), :class:`medexport.lite.LitePipeline` (numpy,
ONNX Runtime sessions) and the Triton sampler model (numpy, calls to the per-count models) all sample through
:func:`run_request`; they differ only in their array adapter and in how a forward reaches the engine. So one
request gives one set of images in each.

A forward is ``forward(x, t, y) -> v`` for any batch (x (B, C, S, S) float32, t (B,) float32, y (B,) int64, as
the adapter's arrays). With guidance the state is doubled here ([x; x], labels [y; null]) as the reference does.
Hooks see every engine call before it runs (``hook(Evaluation)``): what calibration records.

:class:`RequestRun` is the loop of one request with the engine calls handed to a dispatch: run in place by
:func:`run_request`, or batched with other requests' calls by :mod:`medexport.core.scheduler`.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import SamplingError
from .arrays import Arrays
from .request import INITIAL, MAX_IMAGES, SDE_COND, SDE_UNCOND, RowNoise, SampleRequest
from .samplers import Run
from .samplers import get as get_sampler
from .schedule import FixedSchedule, Schedule
from .schedule_text import parse_schedule
from .settings import SamplingSettings
from .steps import StepInfo

Forward = Callable[[object, object, object], object]


@dataclass(frozen=True)
class ModelShape:
    """What the sampling loop needs to know of a model: its state (channels, size) and its classes (the null
    class ``num_classes`` is the unconditional label)."""

    channels: int
    size: int
    num_classes: int

    @classmethod
    def of(cls, config) -> ModelShape:
        """From a model config (a :class:`~medexport.model.ModelConfig` or its JSON dict)."""
        get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
        return cls(int(get("in_channels")), int(get("input_size")), int(get("num_classes")))


@dataclass(frozen=True)
class TraceEntry:
    """One model evaluation: which step, at which t, on which engine, how long (ms, device-timed on GPU)."""

    step: int
    t: float
    mediators: int
    backend: str
    ms: float
    batch: int


@dataclass(frozen=True)
class Evaluation:
    """One engine call as a hook sees it, before it runs: the inputs the engine of ``mediators`` receives
    (guidance doubling included), at ``step``."""

    mediators: int
    x: object
    t: object
    y: object
    step: StepInfo


Hook = Callable[[Evaluation], None]


@dataclass
class SampleResult:
    """Final latents (B, C, S, S) of the conditional half (the adapter's arrays; :class:`medexport.Pipeline`
    returns a CPU float32 tensor), the trace of every model evaluation, the wall time and the settings that
    ran (every field resolved, plus seed, labels and backend)."""

    latents: object
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

    def step_ms(self) -> dict[int, tuple[int, float]]:
        """Each denoising step's mediator count and engine time (all its evaluations summed), in step order."""
        steps: dict[int, tuple[int, float]] = {}
        for e in self.trace:
            n, ms = steps.get(e.step, (e.mediators, 0.0))
            steps[e.step] = (e.mediators, ms + e.ms)
        return dict(sorted(steps.items()))

    def switch_steps(self) -> list[int]:
        """The steps whose count differs from the step before's: the first step after each switch."""
        steps = self.step_ms()
        order = list(steps)
        return [s for prev, s in zip(order, order[1:]) if steps[s][0] != steps[prev][0]]

    def trace_dicts(self) -> list[dict]:
        return [
            {"step": e.step, "t": e.t, "mediators": e.mediators, "backend": e.backend, "ms": e.ms, "batch": e.batch}
            for e in self.trace
        ]


def guide(out, cfg_scale: float, channels: int | None, cat) -> object:
    """Classifier-free guidance of a [cond; uncond] output (2B, C, S, S), as the reference combines it.

    The first ``channels`` channels (3 in the reference, kept "for exact reproducibility"; None: all) become
    uncond + s * (cond - uncond), in both halves; the other channels keep the model's output. ``cat(parts,
    axis)`` joins arrays (``numpy.concatenate``, ``torch.cat``).
    """
    k = out.shape[1] if channels is None else channels
    eps, rest = out[:, :k], out[:, k:]
    half = len(eps) // 2
    cond, uncond = eps[:half], eps[half:]
    half_eps = uncond + cfg_scale * (cond - uncond)
    return cat([cat([half_eps, half_eps], 0), rest], 1)


def resolve_schedule(schedule: Schedule | str | None, counts: Sequence[int]) -> Schedule:
    """The schedule object for a run over ``counts``: None is the largest count alone; checked against them."""
    if schedule is None:
        sched: Schedule = FixedSchedule.static(max(counts))
    elif isinstance(schedule, str):
        sched = parse_schedule(schedule)
    else:
        sched = schedule
    sched.validate_against(counts)
    return sched


def check_labels(labels: Sequence[int], num_classes: int) -> None:
    bad = [int(v) for v in labels if not 0 <= v < num_classes]
    if bad:
        raise SamplingError(
            f"labels {bad[:10]} are outside 0..{num_classes - 1} (the model has {num_classes} "
            f"classes; the null class {num_classes} is added by guidance)"
        )


#: Calls per engine and batch size in :func:`warmup`. ONNX Runtime plans a session's memory for a shape on its
#: first run and allocates by that plan on the second: with one warm-up call, the first step after each switch
#: still took 1.2-1.3x the median step (the demo, 1 and 2 threads); with two, the steps after a switch are within
#: the run-to-run noise of the others.
WARMUP_CALLS = 2


#: The largest engine batch a request makes: its most images, doubled by guidance.
MAX_ENGINE_BATCH = 2 * MAX_IMAGES


def check_batches(batches: object) -> list[int]:
    """``batches`` of :func:`warmup` as a list; SamplingError naming ``batches`` for anything but a non-empty list
    of batch sizes in 1..:data:`MAX_ENGINE_BATCH` (larger than an engine's range is fine: it is run in chunks, as
    a request of that size would be)."""
    if isinstance(batches, (str, bytes)) or not isinstance(batches, Sequence):
        raise SamplingError(f"batches must be a list of batch sizes (e.g. [1, 8]), got {batches!r}")
    bad = [
        b
        for b in batches
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 1 <= b <= MAX_ENGINE_BATCH
    ]
    if bad or not batches:
        raise SamplingError(
            f"batches takes engine batch sizes in 1..{MAX_ENGINE_BATCH} (images, doubled with "
            f"guidance), got {bad[:5] if bad else 'an empty list'}: give e.g. batches=[1, 8], or a "
            f"request to warm up at the sizes it will use"
        )
    return [int(b) for b in batches]


def warmup(forwards: Mapping[int, Forward], *, xp: Arrays, shape: ModelShape, batches: Sequence[int]) -> dict:
    """Open and run every engine :data:`WARMUP_CALLS` times at each batch size in ``batches`` (guidance doubling
    included), so that no step of a run, the first after a switch included, pays for a session's creation, its
    first allocations or its memory planning. Returns {count: seconds}; SamplingError, before any engine runs,
    for batch sizes that are not (:func:`check_batches`)."""
    batches = check_batches(batches)
    seconds = {}
    for n, forward in sorted(forwards.items()):
        start = time.perf_counter()
        for b in sorted(set(batches)):
            x = xp.from_numpy(np.zeros((b, shape.channels, shape.size, shape.size), np.float32))
            for _ in range(WARMUP_CALLS):
                forward(x, xp.full(b, 0.5, like=x), xp.labels([0] * b))
        seconds[n] = time.perf_counter() - start
    return seconds


def warmup_batches(
    request: SampleRequest | None, defaults: SamplingSettings | None, batches: Sequence[int] | None = None
) -> list[int]:
    """The batch sizes to warm up at: ``batches`` as given, else those a request's engine calls have (its images,
    doubled with guidance), else 1; SamplingError for both or for a request that is not one."""
    if request is not None and batches is not None:
        raise SamplingError("give a request or batches to warm up at, not both")
    if batches is not None:
        return check_batches(batches)
    if request is None:
        return [1]
    if not isinstance(request, SampleRequest):
        raise SamplingError(f"expected a SampleRequest to warm up for, got {type(request).__name__}")
    guided = request.settings.over(defaults).resolved().guided
    return [len(request.labels) * (2 if guided else 1)]


@dataclass(frozen=True)
class EngineCall:
    """One engine call a step needs: the engine of ``mediators`` on ``x`` (rows, guidance doubling included), with
    per-row ``t`` and ``y``, at ``step``. A step needs one call per mediator count its rows are given."""

    mediators: int
    x: object
    t: object
    y: object
    step: StepInfo


#: ``dispatch(calls) -> [(v, ms), ...]``: runs one velocity evaluation's engine calls (one per mediator count),
#: returning each call's output (shaped like its x) and the milliseconds of the forward that ran it. A dispatch
#: may run the calls itself (:meth:`RequestRun.direct`) or hand them to a scheduler that batches them with other
#: requests' calls (:class:`medexport.core.scheduler.StepScheduler`).
Dispatch = Callable[[list[EngineCall]], list[tuple[object, float]]]


class RequestRun:
    """One request, checked and prepared (settings merged, sampler and schedule chosen, labels checked, initial
    state and noise drawn), then run by :meth:`run` through a dispatch that reaches the engines.

    This is the sampling loop, written once: :func:`run_request` runs it with the engines called in place
    (:meth:`direct`); the step scheduler runs many at once, each with a dispatch that joins the step's calls to
    those of the other requests in flight. The state, guidance, noise, schedule decisions and trace stay the
    request's own, so a request gives the same images either way.

    Args:
        counts: the mediator counts whose engines exist.
        xp: the array adapter the engines take and return.
        shape: the model's state and classes.
        defaults: the settings used where the request gives none (a bundle's recommendation).
        schedule: a schedule object, replacing the request's text schedule.
        noise: the initial state (B, C, S, S), any array the adapter takes; drawn from the request's seeds when
            omitted.
        backends: the name each count's engine reports in the trace.
    """

    def __init__(
        self,
        request: SampleRequest,
        *,
        counts: Sequence[int],
        xp: Arrays,
        shape: ModelShape,
        defaults: SamplingSettings | None = None,
        schedule: Schedule | None = None,
        noise=None,
        backends: Mapping[int, str] | None = None,
    ):
        if not isinstance(request, SampleRequest):
            raise SamplingError(f"expected a SampleRequest, got {type(request).__name__}")
        counts = sorted(counts)
        self.request, self.xp, self.shape = request, xp, shape
        self.settings = settings = request.settings.over(defaults).resolved()  # the one merge of a run
        self.sampler = get_sampler(settings, xp)
        self.schedule = sched = resolve_schedule(schedule if schedule is not None else settings.schedule, counts)
        if sched.adaptive and settings.num_model_steps is None:
            raise SamplingError(
                "an adaptive schedule needs a fixed-step sampler (not dopri5): use --method euler/heun "
                "or a fixed schedule"
            )
        check_labels(request.labels, shape.num_classes)
        self.guided = settings.guided
        # 3 on a 1-channel model: all
        self.channels = None if settings.cfg_channels == "all" else min(3, shape.channels)
        self.images = B = len(request.labels)
        state = (shape.channels, shape.size, shape.size)
        seeds = request.row_seeds()
        if noise is None:  # float32 from each image's own generator, on the host, then moved (as the reference)
            x0 = xp.from_numpy(RowNoise.for_request(seeds, INITIAL, B)((B, *state)))
        else:
            if tuple(getattr(noise, "shape", ())) != (B, *state):
                raise SamplingError(
                    f"noise must be {(B, *state)} for {B} labels, got "
                    f"{tuple(getattr(noise, 'shape', ())) or type(noise).__name__}"
                )
            x0 = xp.from_numpy(np.asarray(xp.to_numpy(noise), dtype=np.float32))
        sde_noise = RowNoise.for_request(seeds, SDE_COND, B)
        y = xp.labels(request.labels)
        if self.guided:  # the reference: z = [z; z], y = [y; null]
            x0 = xp.cat([x0, x0])
            y = xp.cat([y, xp.labels([shape.num_classes] * B)])
            sde_noise = sde_noise + RowNoise.for_request(seeds, SDE_UNCOND, B)
        self.x0, self.y, self.sde_noise = x0, y, sde_noise
        self.names = dict(backends or {})
        self.trace: list[TraceEntry] = []
        self.timer = xp.timer()

    @property
    def rows(self) -> int:
        """The rows of the state: the images, doubled with guidance (what one step's engine calls hold)."""
        return len(self.x0)

    def backend(self, n: int) -> str:
        return self.names.get(n, self.xp.name)

    def direct(self, forwards: Mapping[int, Forward], hooks: Sequence[Hook] = ()) -> Dispatch:
        """A dispatch that runs each call on ``forwards`` at once, in order, hooks first, timed by the adapter."""

        def dispatch(calls: list[EngineCall]) -> list[tuple[object, float]]:
            done = []
            for i, call in enumerate(calls):
                for hook in hooks:
                    hook(Evaluation(call.mediators, call.x, call.t, call.y, call.step))
                start = self.timer.start()
                out = forwards[call.mediators](call.x, call.t, call.y)
                done.append((out, self.timer.stop(start, len(self.trace) + i)))
            return done

        return dispatch

    def run(self, dispatch: Dispatch) -> SampleResult:
        """Sample the request, each velocity evaluation's engine calls going through ``dispatch``."""
        xp, B, guided, sched = self.xp, self.images, self.guided, self.schedule
        cfg_scale, channels, y, trace = self.settings.cfg_scale, self.channels, self.y, self.trace
        per_sample = sched.per_sample
        sched.reset(self.x0[:B] if per_sample else self.x0, xp)
        finite = xp.finite_check(self.request.check_finite)

        def call(n: int, x, t, y_, step: StepInfo) -> EngineCall:
            if guided:  # forward_with_cfg: the conditional half, duplicated
                half = x[: len(x) // 2]
                x = xp.cat([half, half])
            return EngineCall(n, x, t, y_, step)

        def velocity(x, t, step: StepInfo):
            chosen = sched.models_for(step) if per_sample else [sched.model_for(step)] * B
            if len(set(chosen)) == 1:
                groups = [(chosen[0], None)]
            else:
                groups = []
                for n in sorted(set(chosen)):
                    rows = [i for i, k in enumerate(chosen) if k == n]
                    groups.append((n, rows + [r + B for r in rows] if guided else rows))
            calls = [
                call(n, x, t, y, step)
                if rows is None
                else call(n, xp.take(x, rows), xp.take(t, rows), xp.take(y, rows), step)
                for n, rows in groups
            ]
            outs = []
            for c, (out, ms) in zip(calls, dispatch(calls)):
                backend = self.backend(c.mediators)
                trace.append(TraceEntry(step.index, float(step.t), c.mediators, backend, ms, len(c.x)))
                finite.check(out, backend, c.mediators, step)
                outs.append(guide(out, cfg_scale, channels, xp.cat) if guided else out)
            if groups[0][1] is None:
                return outs[0]
            out = xp.empty_like(x)
            for (_, rows), v in zip(groups, outs):
                xp.put(out, rows, v)
            return out

        def on_step(step: StepInfo, x) -> None:
            sched.observe(step, x[:B] if per_sample else x)

        start = time.perf_counter()
        x = self.sampler.integrate(Run(xp, velocity, self.settings, noise=self.sde_noise, on_step=on_step), self.x0)
        finite.flush()
        for i, ms in self.timer.flush().items():
            e = trace[i]
            trace[i] = TraceEntry(e.step, e.t, e.mediators, e.backend, ms, e.batch)
        seconds = time.perf_counter() - start
        request, names = self.request, self.names
        ran = {
            **self.settings.to_dict(),
            "schedule": str(sched),
            "seed": request.seed,
            "labels": list(request.labels),
            "backend": ",".join(sorted(set(names.values()))) if names else xp.name,
        }
        return SampleResult(x[:B], trace, seconds, ran)


def run_request(
    request: SampleRequest,
    *,
    forwards: Mapping[int, Forward],
    xp: Arrays,
    shape: ModelShape,
    defaults: SamplingSettings | None = None,
    schedule: Schedule | None = None,
    noise=None,
    hooks: Sequence[Hook] = (),
    backends: Mapping[int, str] | None = None,
) -> SampleResult:
    """Run one request, its engines called in place (:class:`RequestRun` with :meth:`RequestRun.direct`).

    Args:
        forwards: one forward per mediator count.
        xp: the array adapter the forwards take and return.
        shape: the model's state and classes.
        defaults: the settings used where the request gives none (a bundle's recommendation).
        schedule: a schedule object, replacing the request's text schedule.
        noise: the initial state (B, C, S, S), any array the adapter takes; drawn from the request's seeds when
            omitted.
        hooks: called with each :class:`Evaluation` before the engine runs it.
        backends: the name each count's engine reports in the trace.
    """
    run = RequestRun(
        request,
        counts=list(forwards),
        xp=xp,
        shape=shape,
        defaults=defaults,
        schedule=schedule,
        noise=noise,
        backends=backends,
    )
    return run.run(run.direct(forwards, hooks))
