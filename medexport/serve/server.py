"""An in-process sampling server: the step scheduler (:mod:`medexport.core.scheduler`) run by a thread of its own.

For applications that embed medexport without Triton (a web handler, a notebook, a batch job with many callers):
open a bundle once, warm every engine, then :meth:`SamplingServer.submit` requests from any thread; each returns
a :class:`~medexport.core.scheduler.RequestHandle` (``result(timeout)``, ``cancel()``). Requests in flight are
advanced together, one batched forward per mediator count per tick.

    from medexport.serve.server import SamplingServer
    with SamplingServer.from_bundle("engines/fashion-mnist-demo", threads=2) as server:
        handle = server.submit(SampleRequest([0, 1], seed=0))
        images = handle.result(timeout=60).latents          # numpy (2, 1, 28, 28) in [-1, 1]
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

from ..core.manifest import read_complete
from ..core.request import SampleRequest
from ..core.sampling import SampleResult
from ..core.schedule import Schedule
from ..core.scheduler import RequestHandle, SchedulerLimits, StepScheduler, Unavailable

log = logging.getLogger(__name__)


class SamplingServer:
    """A :class:`StepScheduler` ticked by a background thread; engines warm before the first request.

    Args:
        scheduler: the scheduler to run.
        warm_batches: the row counts to warm every engine at before serving (None: the scheduler's default,
            1 and powers of two up to the largest forward; ``[]``: none).
    """

    def __init__(self, scheduler: StepScheduler, *, warm_batches: Sequence[int] | None = None):
        self.scheduler = scheduler
        self._warm_batches = warm_batches
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.warmup_seconds: dict[int, float] = {}

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        limits: SchedulerLimits | None = None,
        warm_batches: Sequence[int] | None = None,
        start: bool = True,
    ) -> SamplingServer:
        """A server over a bundle's ONNX Runtime engines (:class:`medexport.lite.LitePipeline`'s sessions, hash
        checked), each count's forwards capped by its engine's batch range; started (engines warmed) unless
        ``start=False``."""
        from ..lite import ENGINE, LitePipeline

        pipe = LitePipeline.from_bundle(path, threads=threads)
        manifest = read_complete(path)
        ranges = {n: e.engines[ENGINE].batch for n, e in manifest.counts.items()}
        scheduler = StepScheduler(
            pipe.forwards,
            pipe.shape,
            defaults=pipe.defaults,
            limits=limits,
            batch_ranges=ranges,
            backends=dict.fromkeys(pipe.forwards, ENGINE),
        )
        server = cls(scheduler, warm_batches=warm_batches)
        if start:
            server.start()
        return server

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> SamplingServer:
        """Warm every engine, then start ticking; returns once the server is ready."""
        if self._thread is not None:
            return self
        t0 = time.perf_counter()
        if self._warm_batches is None or len(self._warm_batches):
            self.warmup_seconds = self.scheduler.warmup(self._warm_batches)
        log.info("engines warm in %.1f s", time.perf_counter() - t0)
        self._thread = threading.Thread(target=self._loop, name="medexport-scheduler", daemon=True)
        self._thread.start()
        self._ready.set()
        return self

    def _loop(self) -> None:
        sched = self.scheduler
        try:
            while not self._stop.is_set():
                if sched.wait_for_work(0.1):
                    sched.tick()
        except BaseException as e:  # a bug in the loop: not ready, every request answered, never left hanging
            self.error = e
            log.exception("the scheduler loop failed: the server stops serving")
        finally:
            self._ready.clear()
            sched.close("the server stopped" if self.error is None else f"the server failed ({self.error})")

    @property
    def ready(self) -> bool:
        """Engines warm and the scheduler running (what a readiness probe asks)."""
        return self._ready.is_set() and self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop ticking; requests still waiting or running fail with :class:`Unavailable` ("retry")."""
        self._stop.set()
        with self.scheduler._work:
            self.scheduler._work.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self.scheduler.close("the server stopped")

    def __enter__(self) -> SamplingServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- requests --------------------------------------------------------------------------------------------
    def submit(
        self, request: SampleRequest, *, noise=None, schedule: Schedule | None = None, timeout: float | None = None
    ) -> RequestHandle:
        """Queue ``request``; returns its handle. A bad request raises its MedexportError here, a full queue or
        a server that is not running :class:`Unavailable`."""
        if not self.ready:
            raise Unavailable("the server is not running (not started, stopped or failed): retry on another server")
        return self.scheduler.submit(request, noise=noise, schedule=schedule, timeout=timeout)

    def sample(self, request: SampleRequest, *, timeout: float | None = None, **kwargs) -> SampleResult:
        """Submit and wait; cancels the request when the wait runs out (TimeoutError)."""
        handle = self.submit(request, **kwargs)
        try:
            return handle.result(timeout)
        except TimeoutError:
            handle.cancel("the caller stopped waiting")
            raise

    def stats(self) -> dict:
        s = self.scheduler
        return {"ready": self.ready, "in_flight": s.in_flight, "waiting": s.waiting, **s.stats.to_dict()}
