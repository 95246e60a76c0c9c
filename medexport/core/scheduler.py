"""The step scheduler: every request in flight advanced together, one batched forward per mediator count per tick.

A serving process holds many requests at once, each at its own step, with its own step count, sampler, guidance
scale and schedule. At each :meth:`StepScheduler.tick` the scheduler gathers the engine calls every request in
flight needs for its next velocity evaluation, runs **one forward per mediator count** over all the rows that
need that count now (rows of different requests and time steps side by side: t and y are per row), hands each
request its rows back, and lets each request advance by its own sampler until it needs the engines again.

Each request runs the one sampling loop (:class:`medexport.core.sampling.RequestRun`, what :func:`run_request`
and so :class:`medexport.Pipeline` and :class:`medexport.lite.LitePipeline` run), with a dispatch that parks the
request between its engine calls. A parked request waits in a thread of its own, and only one runs at a time
(the scheduler resumes them one after another), so a request's floating-point operations are the same as when it
runs alone: the same request gives the same images as ``Pipeline.sample`` (ONNX Runtime fp32: bit for bit,
each image's rows being computed by the engine independently of the other rows in its batch).

Continuous batching: a request submitted during a tick joins at the next one; a finished request leaves at
once. A forward holds at most :attr:`SchedulerLimits.max_batch` rows (and an engine's batch range splits it
further); a step whose rows need more runs several forwards. Limits (:class:`SchedulerLimits`) bound the steps
and images of a request, the requests in flight and waiting, and each request's time; a full queue is refused
with :class:`Unavailable` ("retry"), never an unbounded wait. A cancelled request (its client gone) leaves at
the next tick, so it stops within one step. A request that fails (bad outputs, an engine that refuses its rows)
fails alone: a forward that raises is run again call by call, so only the calls that fail fail their requests.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import MedexportError, SamplingError
from .arrays import NUMPY, Arrays
from .batch import BatchRange
from .request import SampleRequest
from .sampling import EngineCall, Forward, ModelShape, RequestRun, SampleResult, warmup
from .schedule import Schedule
from .settings import SamplingSettings

log = logging.getLogger(__name__)


#: The largest row count :meth:`StepScheduler.warmup` runs by default: the sessions' first runs are paid there; a
#: larger forward later plans its memory once, at a cost of the order of one forward.
WARM_ROWS = 64


class Unavailable(MedexportError):
    """The scheduler cannot take a request now (its queue is full, or it is stopping): retry later."""


class Cancelled(MedexportError):
    """The request was cancelled (its client gone) before it finished."""


class RequestTimeout(Cancelled):
    """The request did not finish within its time limit; it was stopped."""


@dataclass(frozen=True)
class SchedulerLimits:
    """What a scheduler accepts and how it batches, with safe defaults for a server.

    Attributes:
        max_steps: the most steps a request may ask for (the ``steps`` setting: grid points); the reference's
            largest default is 250 (SDE).
        max_images: the most images (labels) in one request.
        max_queue: the most requests waiting to start; a request beyond it is refused with :class:`Unavailable`.
        max_active: the most requests in flight (stepping) at once; the others wait in the queue.
        max_batch: the most rows in one forward (guidance doubling counted); None: the engines' batch range
            maximum (64 where the range is not known). A smaller value bounds each forward's latency.
        timeout_s: the most seconds a request may take from submission (waiting included); None: no limit.
    """

    max_steps: int = 1000
    max_images: int = 64
    max_queue: int = 256
    max_active: int = 64
    max_batch: int | None = None
    timeout_s: float | None = 600.0

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_images", "max_queue", "max_active"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise SamplingError(f"scheduler limit {name} must be an integer >= 1, got {value!r}")
        if self.max_batch is not None and (
            isinstance(self.max_batch, bool) or not isinstance(self.max_batch, (int, np.integer)) or self.max_batch < 1
        ):
            raise SamplingError(f"scheduler limit max_batch must be an integer >= 1 or None, got {self.max_batch!r}")
        if self.timeout_s is not None and (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, (int, float))
            or not 0 < self.timeout_s < float("inf")
        ):
            raise SamplingError(
                f"scheduler limit timeout_s must be a number of seconds > 0 or None, got {self.timeout_s!r}"
            )


class RequestHandle:
    """A submitted request: wait for its result, or cancel it (its client gone).

    ``result(timeout)`` returns the :class:`SampleResult` (latents of the request's own images, its trace) or
    raises the request's error (:class:`Cancelled`, :class:`RequestTimeout`, a :class:`SamplingError`, ...).
    """

    def __init__(self, id: int, request: SampleRequest, deadline: float | None):
        self.id, self.request, self.deadline = id, request, deadline
        self.submitted = time.perf_counter()
        self.finished: float | None = None
        self._done = threading.Event()
        self._result: SampleResult | None = None
        self._error: BaseException | None = None
        self._cancel: Cancelled | None = None
        self._callbacks: list[Callable[[RequestHandle], None]] = []
        self._lock = threading.Lock()

    def cancel(self, reason: str = "the request was cancelled") -> bool:
        """Stop the request at the next tick (within one step); False when it had already finished."""
        with self._lock:
            if self._done.is_set():
                return False
            if self._cancel is None:
                self._cancel = Cancelled(reason)
        return True

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> SampleResult:
        """The result, waiting up to ``timeout`` seconds (TimeoutError when it is not done by then)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} is not done after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} is not done after {timeout} s")
        return self._error

    @property
    def latency(self) -> float | None:
        """Seconds from submission to the result (None while running)."""
        return None if self.finished is None else self.finished - self.submitted

    def add_done_callback(self, fn: Callable[[RequestHandle], None]) -> None:
        """Call ``fn(handle)`` when the request finishes (at once if it has); it runs in the scheduler's thread."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self, result: SampleResult | None, error: BaseException | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._result, self._error = result, error
            self.finished = time.perf_counter()
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a callback's bug must not stop the scheduler: it is the caller's to see
                log.exception("a done callback of request %d failed", self.id)


class _Flight:
    """One request in flight: its :class:`RequestRun` parked in a thread of its own between engine calls.

    The scheduler resumes it with the outputs of its last calls (:meth:`resume`) and waits until it asks for the
    next ones or finishes; the two threads hand over with semaphores, so only one of them runs at a time.
    """

    def __init__(self, handle: RequestHandle, run: RequestRun):
        self.handle, self.run = handle, run
        self.calls: list[EngineCall] | None = None
        self.finished = False
        self.outcome: tuple[SampleResult | None, BaseException | None] = (None, None)
        self._results: list | None = None
        self._throw: BaseException | None = None
        self._go, self._back = threading.Semaphore(0), threading.Semaphore(0)
        self._thread = threading.Thread(target=self._main, name=f"medexport-request-{handle.id}", daemon=True)

    def _main(self) -> None:
        self._go.acquire()
        try:
            if self._throw is not None:
                raise self._throw
            self.outcome = (self.run.run(self._dispatch), None)
        except Exception as e:  # the request's own failure: reported to its handle, never to the others
            self.outcome = (None, e)
        finally:
            self.calls, self.finished = None, True
            self._back.release()

    def _dispatch(self, calls: list[EngineCall]) -> list[tuple[object, float]]:
        self.calls = calls
        self._back.release()
        self._go.acquire()
        self.calls = None
        if self._throw is not None:
            raise self._throw
        return self._results

    def start(self) -> None:
        """Run the request up to its first engine calls."""
        self._thread.start()
        self._go.release()
        self._back.acquire()

    def resume(self, results: list | None = None, throw: BaseException | None = None) -> None:
        """Give the request its calls' outputs (or raise ``throw`` in it) and run it up to its next calls."""
        self._results, self._throw = results, throw
        self._go.release()
        self._back.acquire()


@dataclass
class CountStats:
    """Forwards run for one mediator count and the rows they held."""

    forwards: int = 0
    rows: int = 0
    ms: float = 0.0

    @property
    def rows_per_forward(self) -> float:
        return self.rows / self.forwards if self.forwards else 0.0


@dataclass
class SchedulerStats:
    """What a scheduler has done since it was made (or :meth:`StepScheduler.reset_stats`)."""

    ticks: int = 0
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    refused: int = 0
    counts: dict[int, CountStats] = field(default_factory=dict)

    def rows_per_forward(self) -> float:
        forwards = sum(c.forwards for c in self.counts.values())
        return sum(c.rows for c in self.counts.values()) / forwards if forwards else 0.0

    def to_dict(self) -> dict:
        return {
            "ticks": self.ticks,
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "refused": self.refused,
            "rows_per_forward": round(self.rows_per_forward(), 3),
            "counts": {
                n: {
                    "forwards": c.forwards,
                    "rows": c.rows,
                    "rows_per_forward": round(c.rows_per_forward, 3),
                    "ms": round(c.ms, 3),
                }
                for n, c in sorted(self.counts.items())
            },
        }


class StepScheduler:
    """Every request in flight, advanced together: one batched forward per mediator count per :meth:`tick`.

    ``forwards[n](x, t, y) -> v`` takes any batch of rows (numpy float32 x (B, C, S, S), t (B,), int64 y (B,)):
    the same forwards :class:`medexport.lite.LitePipeline` runs. Thread-safe: :meth:`submit` and
    :meth:`RequestHandle.cancel` from any thread, :meth:`tick` from one (:class:`medexport.serve.server.SamplingServer`
    runs it in a thread of its own).

    Args:
        forwards: one forward per mediator count.
        shape: the model's state and classes.
        defaults: the settings used where a request gives none (a bundle's recommendation).
        limits: what a request may ask for and how forwards are batched.
        batch_ranges: each count's engine batch range (bounds ``max_batch``).
        backends: the name each count's engine reports in the trace.
        xp: the array adapter of the forwards (numpy).
    """

    def __init__(
        self,
        forwards: Mapping[int, Forward],
        shape: ModelShape,
        *,
        defaults: SamplingSettings | None = None,
        limits: SchedulerLimits | None = None,
        batch_ranges: Mapping[int, BatchRange | None] | None = None,
        backends: Mapping[int, str] | None = None,
        xp: Arrays = NUMPY,
    ):
        if not forwards:
            raise SamplingError("a scheduler needs at least one mediator count's forward")
        self.forwards = dict(sorted(forwards.items()))
        self.shape, self.xp = shape, xp
        self.defaults = defaults
        self.limits = limits or SchedulerLimits()
        self.backends = dict(backends or {})
        ranges = dict(batch_ranges or {})
        self.max_batch = {n: self._cap(ranges.get(n)) for n in self.forwards}
        self.stats = SchedulerStats(counts={n: CountStats() for n in self.forwards})
        self._ids = itertools.count(1)
        self._queue: deque[_Flight] = deque()
        self._active: list[_Flight] = []
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._closed = False

    def _cap(self, batch: BatchRange | None) -> int:
        cap = self.limits.max_batch or (batch.max if batch is not None else 64)
        return min(cap, batch.max) if batch is not None else cap

    @property
    def counts(self) -> list[int]:
        return list(self.forwards)

    # -- requests --------------------------------------------------------------------------------------------
    def prepare(self, request: SampleRequest, *, noise=None, schedule: Schedule | None = None) -> RequestRun:
        """The request checked against the model and the limits, ready to run; SamplingError naming the field."""
        if not isinstance(request, SampleRequest):
            raise SamplingError(f"expected a SampleRequest, got {type(request).__name__}")
        if len(request.labels) > self.limits.max_images:
            raise SamplingError(
                f"labels: {len(request.labels)} images in one request is more than this server's "
                f"limit of {self.limits.max_images}: split it into smaller requests"
            )
        steps = request.settings.over(self.defaults).resolved().resolved_steps
        if steps > self.limits.max_steps:
            raise SamplingError(
                f"steps: {steps} is more than this server's limit of {self.limits.max_steps}: ask for fewer steps"
            )
        run = RequestRun(
            request,
            counts=self.counts,
            xp=self.xp,
            shape=self.shape,
            defaults=self.defaults,
            schedule=schedule,
            noise=noise,
            backends=self.backends,
        )
        if run.settings.num_model_steps is None:
            raise SamplingError(
                f"method: {run.settings.method} chooses its own steps; the scheduler runs the "
                f"fixed-step samplers (euler, heun)"
            )
        return run

    def submit(
        self, request: SampleRequest, *, noise=None, schedule: Schedule | None = None, timeout: float | None = None
    ) -> RequestHandle:
        """Queue a request; it starts at the next tick with room. Returns its handle.

        Raises (before queueing): SamplingError (or another MedexportError) naming a bad field; :class:`Unavailable`
        when the queue is full or the scheduler is closed.
        """
        try:
            run = self.prepare(request, noise=noise, schedule=schedule)
        except MedexportError:
            with self._lock:
                self.stats.refused += 1
            raise
        limit = timeout if timeout is not None else self.limits.timeout_s
        with self._lock:
            if self._closed:
                raise Unavailable("the scheduler is stopping and takes no requests: retry on another server")
            if len(self._queue) >= self.limits.max_queue:
                self.stats.refused += 1
                raise Unavailable(
                    f"the server is busy: {len(self._queue)} requests are waiting (its limit): retry later"
                )
            handle = RequestHandle(next(self._ids), request, None if limit is None else time.perf_counter() + limit)
            self._queue.append(_Flight(handle, run))
            self.stats.submitted += 1
            self._work.notify_all()
        return handle

    def sample(self, request: SampleRequest, **kwargs) -> SampleResult:
        """Submit one request and tick until it is done (no server thread: for tests and scripts)."""
        handle = self.submit(request, **kwargs)
        while not handle.done():
            self.tick()
        return handle.result()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._active

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until a request is waiting or in flight (or ``timeout``); True when there is work."""
        with self._work:
            return self._work.wait_for(lambda: self._queue or self._active or self._closed, timeout) and bool(
                self._queue or self._active
            )

    def close(self, reason: str = "the server stopped before the request finished") -> None:
        """Refuse new requests and fail every waiting and running one with :class:`Unavailable` (at once)."""
        with self._lock:
            self._closed = True
            queued, self._queue = list(self._queue), deque()
            self._work.notify_all()
        for f in queued:
            f.handle._finish(None, Unavailable(f"{reason}: retry"))
        for f in list(self._active):
            self._stop(f, Unavailable(f"{reason}: retry"))
        self._active = []

    def warmup(self, batches: Sequence[int] | None = None) -> dict[int, float]:
        """Run every engine at ``batches`` rows (default: 1 and powers of two up to the largest forward, at most
        :data:`WARM_ROWS`), so that no request pays for a session's first runs. Returns {count: seconds}."""
        if batches is None:
            top = min(max(self.max_batch.values()), WARM_ROWS)
            batches = sorted({min(1 << k, top) for k in range(top.bit_length() + 1)})
        return warmup(self.forwards, xp=self.xp, shape=self.shape, batches=batches)

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = SchedulerStats(counts={n: CountStats() for n in self.forwards})

    # -- one tick --------------------------------------------------------------------------------------------
    def tick(self) -> int:
        """Admit waiting requests, run one batched forward per mediator count (more where a count's rows exceed
        ``max_batch``) over every request's next engine calls, and advance each request. Returns the rows run."""
        now = time.perf_counter()
        with self._lock:
            room = self.limits.max_active - len(self._active)
            admitted, dropped = [], []
            while self._queue and room > 0:
                f = self._queue.popleft()
                if self._why(f, now) is not None:
                    dropped.append(f)
                    continue
                admitted.append(f)
                room -= 1
            self.stats.ticks += 1
        for f in dropped:  # cancelled or out of time while waiting: never started
            self._stop(f, self._why(f, now), started=False)
        for f in admitted:
            f.start()
            self._active.append(f)
        # Requests that finished, were cancelled or timed out leave before the forwards.
        running = []
        for f in self._active:
            why = None if f.finished else self._why(f, now)
            if why is not None:
                self._stop(f, why)  # it leaves here
            elif f.finished:
                self._leave(f)
            else:
                running.append(f)
        self._active = running
        calls = [(f, c) for f in running for c in f.calls]
        results = self._forwards(calls)
        for f in running:
            outs = results.get(id(f))
            if isinstance(outs, BaseException):
                f.resume(throw=outs)
            else:
                f.resume(outs)
        still = []
        for f in running:
            if f.finished:
                self._leave(f)
            else:
                still.append(f)
        self._active = still
        return sum(len(c.x) for _, c in calls)

    def _why(self, f: _Flight, now: float) -> Cancelled | None:
        h = f.handle
        if h._cancel is not None:
            return h._cancel
        if h.deadline is not None and now > h.deadline:
            return RequestTimeout(f"the request took more than its limit of {self.limits.timeout_s} s and was stopped")
        return None

    def _stop(self, f: _Flight, error: BaseException, *, started: bool = True) -> None:
        if started and not f.finished:
            f.resume(throw=error)
        f.outcome = (None, error)
        f.finished = True
        self._leave(f)

    def _leave(self, f: _Flight) -> None:
        result, error = f.outcome
        with self._lock:
            if isinstance(error, Cancelled):
                self.stats.cancelled += 1
            elif error is not None:
                self.stats.failed += 1
            else:
                self.stats.completed += 1
        f.handle._finish(result, error)

    def _forwards(self, calls: list[tuple[_Flight, EngineCall]]) -> dict[int, list | BaseException]:
        """Run ``calls`` grouped by mediator count: {id(flight): [(v, ms) per call, in order] or its error}."""
        out: dict[int, list | BaseException] = {}
        by_count: dict[int, list[tuple[_Flight, int, EngineCall]]] = {}
        for f, c in calls:
            slots = out.setdefault(id(f), [])
            by_count.setdefault(c.mediators, []).append((f, len(slots), c))
            slots.append(None)
        for n, group in sorted(by_count.items()):
            try:
                done = self._batched(n, [c for _, _, c in group])
            except Exception as e:  # run alone, each call's request sees only its own failure
                log.warning("a batched forward of %d mediators failed (%s): running its calls one by one", n, e)
                done = []
                for _, _, c in group:
                    try:
                        done.extend(self._batched(n, [c]))
                    except Exception as one:
                        done.append(one)
            for (f, slot, _), res in zip(group, done):
                if isinstance(out[id(f)], BaseException):
                    continue
                if isinstance(res, BaseException):
                    out[id(f)] = res
                else:
                    out[id(f)][slot] = res
        return out

    def _batched(self, n: int, calls: list[EngineCall]) -> list[tuple[object, float]]:
        """One forward of count ``n`` over the rows of ``calls`` (several when they exceed its cap)."""
        xp = self.xp
        sizes = [len(c.x) for c in calls]
        x = xp.cat([c.x for c in calls]) if len(calls) > 1 else calls[0].x
        t = xp.cat([c.t for c in calls]) if len(calls) > 1 else calls[0].t
        y = xp.cat([c.y for c in calls]) if len(calls) > 1 else calls[0].y
        total = len(x)
        chunks = BatchRange(1, 1, self.max_batch[n]).chunks(total)
        outs, ends, ms = [], [], []
        start = 0
        for size in chunks:
            t0 = time.perf_counter()
            v = self.forwards[n](x[start : start + size], t[start : start + size], y[start : start + size])
            ms.append((time.perf_counter() - t0) * 1e3)
            if not xp.is_array(v) or tuple(v.shape) != tuple(x[start : start + size].shape):
                got = tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
                raise SamplingError(f"the engine for {n} mediators returned {got} for {size} rows")
            outs.append(v)
            start += size
            ends.append(start)
        with self._lock:
            st = self.stats.counts[n]
            st.forwards += len(chunks)
            st.rows += total
            st.ms += sum(ms)
        v = xp.cat(outs) if len(outs) > 1 else outs[0]
        done, start = [], 0
        for size in sizes:  # each call: its rows, and the time of the forwards its rows were in
            first = next(i for i, e in enumerate(ends) if e > start)
            last = next(i for i, e in enumerate(ends) if e >= start + size)
            done.append((v[start : start + size], float(sum(ms[first : last + 1]))))
            start += size
        return done
