"""The step scheduler (medexport.core.scheduler): many requests, one batched forward per count per tick, the same
images as each request run alone (Pipeline, LitePipeline), and limits, cancellation and failures kept per request."""

import threading

import numpy as np
import pytest

pytest.importorskip("torch", reason="these checks sample bundles built with torch, against Pipeline")

from medexport import Pipeline, SampleRequest  # noqa: E402
from medexport.core.batch import BatchRange  # noqa: E402
from medexport.core.manifest import read_complete  # noqa: E402
from medexport.core.scheduler import Cancelled, RequestTimeout, SchedulerLimits, StepScheduler, Unavailable  # noqa: E402
from medexport.errors import SamplingError, ScheduleError  # noqa: E402
from medexport.lite import LitePipeline  # noqa: E402

#: Requests that differ in everything a step can differ in: sampler, method, steps, guidance, schedule (fixed,
#: static, adaptive per batch and per sample), seeds.
MIXED = [
    SampleRequest([0, 1], seed=1, sampler="ode", method="euler", steps=6, cfg_scale=2.0, schedule="16:0.3,32:0.7,64"),
    SampleRequest([2], seed=2, sampler="ode", method="heun", steps=4, cfg_scale=1.0, schedule="32"),
    SampleRequest([3, 4, 5], seed=3, sampler="sde", method="euler", steps=5, cfg_scale=3.0, schedule="64"),
    SampleRequest([6], seed=4, sampler="sde", method="heun", steps=3, schedule="16:0.5,64"),
    SampleRequest(
        [7, 8],
        seed=5,
        sampler="ode",
        method="euler",
        steps=9,
        cfg_scale=1.5,
        schedule="adaptive:16,32,64:ratios=0.9,0.5:warmup=2:per-sample",
    ),
    SampleRequest(
        [9], image_seeds=[12345], sampler="ode", method="euler", steps=7, schedule="adaptive:16,64:ratios=0.8:warmup=1"
    ),
]


@pytest.fixture(scope="module")
def lite(tiny_bundle):
    return LitePipeline.from_bundle(tiny_bundle, threads=1)


def scheduler(lite, tiny_bundle, forwards=None, ranges=True, **limits):
    ranges = (
        {n: e.engines["onnxruntime"].batch for n, e in read_complete(tiny_bundle).counts.items()} if ranges else None
    )
    return StepScheduler(
        forwards or lite.forwards,
        lite.shape,
        defaults=lite.defaults,
        limits=SchedulerLimits(**limits),
        batch_ranges=ranges,
        backends=dict.fromkeys(lite.forwards, "onnxruntime"),
    )


def run_all(sched, requests, **kw):
    handles = [sched.submit(r, **kw) for r in requests]
    for _ in range(10_000):
        if all(h.done() for h in handles):
            break
        sched.tick()
    return handles


def test_mixed_requests_batched_give_each_requests_own_images(lite, tiny_bundle):
    # no batch ranges: forwards of up to 64 rows (the engines, 1..4, run them in chunks: the same bits)
    sched = scheduler(lite, tiny_bundle, ranges=False, max_batch=64)
    handles = run_all(sched, MIXED)
    pipe = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime", threads=1)
    for request, h in zip(MIXED, handles):
        got = h.result(0)
        alone = lite.run(request)
        np.testing.assert_array_equal(got.latents, alone.latents)  # the torch-free runtime: bit for bit
        # the trace says the same steps, times, counts and rows as the request run alone
        assert [(e.step, e.t, e.mediators, e.batch) for e in got.trace] == [
            (e.step, e.t, e.mediators, e.batch) for e in alone.trace
        ]
        assert got.settings == alone.settings
        if request.sampler == "ode":  # Pipeline (torch arrays): bit for bit for the ODE
            np.testing.assert_array_equal(got.latents, pipe.run(request).latents.numpy())
    stats = sched.stats
    # rows of different requests (and steps, guidance scales, samplers) share forwards
    assert stats.rows_per_forward() > 5 and stats.completed == len(MIXED) and stats.failed == 0
    assert sum(c.forwards for c in stats.counts.values()) < 0.6 * sum(len(h.result().trace) for h in handles)


def test_a_forward_never_exceeds_its_cap_and_the_images_stay_the_same(lite, tiny_bundle):
    sizes = []

    def counting(n):
        def forward(x, t, y):
            sizes.append(len(x))
            return lite.forwards[n](x, t, y)

        return forward

    sched = scheduler(lite, tiny_bundle, {n: counting(n) for n in lite.forwards}, max_batch=3)
    handles = run_all(sched, MIXED[:3])
    assert max(sizes) <= 3
    for request, h in zip(MIXED, handles):
        np.testing.assert_array_equal(h.result(0).latents, lite.run(request).latents)
    # the engine's batch range bounds the cap too (the tiny bundle's engines take 1..4 rows)
    assert scheduler(lite, tiny_bundle, max_batch=100).max_batch == dict.fromkeys(lite.forwards, 4)


def test_a_request_submitted_later_joins_at_the_next_tick(lite, tiny_bundle):
    sched = scheduler(lite, tiny_bundle)
    first = sched.submit(MIXED[0])
    for _ in range(3):
        sched.tick()
    assert sched.in_flight == 1
    second = sched.submit(MIXED[2])
    rows = sched.tick()
    assert sched.in_flight == 2 and rows == 4 + 6  # both requests' rows in this tick (guided: doubled)
    while not (first.done() and second.done()):
        sched.tick()
    assert sched.idle() and sched.in_flight == 0  # finished requests left
    np.testing.assert_array_equal(first.result().latents, lite.run(MIXED[0]).latents)
    np.testing.assert_array_equal(second.result().latents, lite.run(MIXED[2]).latents)


def test_limits_refuse_with_the_field_named(lite, tiny_bundle):
    sched = scheduler(lite, tiny_bundle, max_images=2, max_queue=2)
    with pytest.raises(SamplingError, match=r"^steps: 100000 is more than this server's limit of 1000"):
        sched.submit(SampleRequest([0], steps=100_000))  # refused by default, before any work
    with pytest.raises(SamplingError, match=r"^labels: 3 images in one request is more than this server's limit of 2"):
        sched.submit(SampleRequest([0, 1, 2]))
    with pytest.raises(SamplingError, match="outside 0..9"):
        sched.submit(SampleRequest([10]))
    with pytest.raises(ScheduleError, match="128"):
        sched.submit(SampleRequest([0], schedule="16:0.5,128"))
    sched.submit(SampleRequest([0], seed=0, steps=3))
    sched.submit(SampleRequest([0], seed=0, steps=3))
    with pytest.raises(Unavailable, match="busy: 2 requests are waiting.*retry"):
        sched.submit(SampleRequest([0], seed=0, steps=3))
    assert sched.stats.refused == 5 and sched.stats.submitted == 2
    with pytest.raises(SamplingError, match="max_queue must be an integer >= 1"):
        SchedulerLimits(max_queue=0)
    with pytest.raises(SamplingError, match="timeout_s must be"):
        SchedulerLimits(timeout_s=float("nan"))


def test_a_cancelled_request_stops_within_one_step_and_the_others_finish(lite, tiny_bundle):
    seen = []

    def recording(n):
        def forward(x, t, y):
            seen.append(set(y.tolist()))
            return lite.forwards[n](x, t, y)

        return forward

    sched = scheduler(lite, tiny_bundle, {n: recording(n) for n in lite.forwards})
    long = SampleRequest([5], seed=0, sampler="ode", method="euler", steps=50, cfg_scale=1.0, schedule="16")
    gone, kept = sched.submit(long), sched.submit(MIXED[0])
    for _ in range(3):
        sched.tick()
    assert gone.cancel("the client disconnected")
    seen.clear()
    sched.tick()
    assert gone.done() and all(5 not in labels for labels in seen)  # no forward after the cancel held its rows
    with pytest.raises(Cancelled, match="the client disconnected"):
        gone.result(0)
    while not kept.done():
        sched.tick()
    np.testing.assert_array_equal(kept.result().latents, lite.run(MIXED[0]).latents)
    assert not kept.cancel() and sched.stats.cancelled == 1 and sched.stats.completed == 1


def test_one_bad_request_never_fails_the_others_batched_with_it(lite, tiny_bundle):
    def fragile(n):
        def forward(x, t, y):
            if 7 in y.tolist():
                raise RuntimeError("the engine refused label 7")
            v = lite.forwards[n](x, t, y)
            return np.where((y == 8)[:, None, None, None], np.float32("nan"), v)  # label 8: NaN outputs

        return forward

    sched = scheduler(lite, tiny_bundle, {n: fragile(n) for n in lite.forwards})
    good = [MIXED[0], MIXED[2]]
    bad7 = SampleRequest([7], seed=0, sampler="ode", method="euler", steps=4)
    bad8 = SampleRequest([8, 1], seed=0, sampler="ode", method="euler", steps=4)
    handles = run_all(sched, [good[0], bad7, good[1], bad8])
    with pytest.raises(RuntimeError, match="refused label 7"):
        handles[1].result(0)
    with pytest.raises(SamplingError, match="produced NaN/inf at step 0"):
        handles[3].result(0)
    for request, h in zip(good, (handles[0], handles[2])):
        np.testing.assert_array_equal(h.result(0).latents, lite.run(request).latents)
    assert sched.stats.failed == 2 and sched.stats.completed == 2


def test_a_request_past_its_time_limit_is_stopped(lite, tiny_bundle):
    sched = scheduler(lite, tiny_bundle, timeout_s=30)
    slow = sched.submit(SampleRequest([0], seed=0, steps=40, schedule="16"), timeout=1e-6)
    fine = sched.submit(SampleRequest([1], seed=0, steps=3, schedule="16"))
    while not (slow.done() and fine.done()):
        sched.tick()
    with pytest.raises(RequestTimeout, match="more than its limit"):
        slow.result(0)
    assert fine.result(0).latents.shape == (1, 4, 16, 16)


def test_submit_from_other_threads_while_ticking(lite, tiny_bundle):
    sched = scheduler(lite, tiny_bundle)
    handles, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            if sched.wait_for_work(0.05):
                sched.tick()

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        clients = [threading.Thread(target=lambda r=r: handles.append((r, sched.submit(r)))) for r in MIXED]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        for request, h in handles:
            np.testing.assert_array_equal(h.result(60).latents, lite.run(request).latents)
    finally:
        stop.set()
        thread.join()
    sched.close()
    with pytest.raises(Unavailable, match="stopping"):
        sched.submit(MIXED[0])


def test_close_fails_waiting_and_running_requests_at_once(lite, tiny_bundle):
    sched = scheduler(lite, tiny_bundle, max_active=1)
    running = sched.submit(SampleRequest([0], seed=0, steps=20))
    waiting = sched.submit(SampleRequest([1], seed=0, steps=20))
    sched.tick()
    sched.close()
    for h in (running, waiting):
        with pytest.raises(Unavailable, match="server stopped.*retry"):
            h.result(0)


def test_batch_range_caps(lite):
    sched = StepScheduler(
        lite.forwards, lite.shape, batch_ranges={16: BatchRange(1, 2, 8)}, limits=SchedulerLimits(max_batch=32)
    )
    assert sched.max_batch == {16: 8, 32: 32, 64: 32}
