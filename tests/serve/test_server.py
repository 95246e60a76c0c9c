"""The in-process sampling server (medexport.serve.server): the step scheduler in a thread of its own, warm
engines, requests from many threads, cancellation, limits."""

import threading

import numpy as np
import pytest

from medexport import SampleRequest
from medexport.core.scheduler import Cancelled, SchedulerLimits, Unavailable
from medexport.errors import SamplingError
from medexport.lite import LitePipeline
from medexport.serve.server import SamplingServer

REQUESTS = [
    SampleRequest([0, 1], seed=1, sampler="ode", method="euler", steps=6, cfg_scale=2.0, schedule="16:0.3,32:0.7,64"),
    SampleRequest([2], seed=2, sampler="ode", method="heun", steps=4, schedule="32"),
    SampleRequest([3, 4], seed=3, sampler="sde", method="euler", steps=5, cfg_scale=3.0, schedule="64"),
    SampleRequest([5], seed=4, sampler="ode", method="euler", steps=8, schedule="adaptive:16,64:ratios=0.8:warmup=1"),
] * 2


@pytest.fixture(scope="module")
def server(tiny_bundle):
    with SamplingServer.from_bundle(tiny_bundle, threads=1, limits=SchedulerLimits(max_queue=64)) as s:
        yield s


def test_many_clients_get_their_own_images(server, tiny_bundle):
    assert server.ready and set(server.warmup_seconds) == {16, 32, 64}  # every engine warm before serving
    lite = LitePipeline.from_bundle(tiny_bundle, threads=1)
    got = {}

    def client(i, request):
        got[i] = server.sample(request, timeout=60).latents

    clients = [threading.Thread(target=client, args=(i, r)) for i, r in enumerate(REQUESTS)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    for i, request in enumerate(REQUESTS):
        np.testing.assert_array_equal(got[i], lite.run(request).latents)
    stats = server.stats()
    assert stats["completed"] >= len(REQUESTS) and stats["rows_per_forward"] > 1


def test_bad_requests_are_refused_and_the_server_keeps_serving(server):
    with pytest.raises(SamplingError, match="^steps: 100000 is more than this server's limit"):
        server.submit(SampleRequest([0], steps=100_000))
    with pytest.raises(SamplingError, match="outside 0..9"):
        server.submit(SampleRequest([11]))
    assert server.sample(REQUESTS[1], timeout=60).latents.shape == (1, 4, 16, 16)


def test_a_cancelled_request_stops(server):
    handle = server.submit(SampleRequest([0], seed=0, sampler="ode", method="euler", steps=1000, schedule="16"))
    handle.cancel("the client disconnected")
    with pytest.raises(Cancelled, match="the client disconnected"):
        handle.result(10)


def test_a_stopped_server_refuses_and_answers_what_it_held(tiny_bundle):
    s = SamplingServer.from_bundle(tiny_bundle, threads=1, warm_batches=[1])
    handle = s.submit(SampleRequest([0], seed=0, sampler="ode", method="euler", steps=1000, schedule="16"))
    s.stop()
    assert not s.ready
    with pytest.raises(Unavailable, match="retry"):
        handle.result(10)
    with pytest.raises(Unavailable, match="not running"):
        s.submit(REQUESTS[0])


def test_the_serving_benchmark_drives_the_server(server):
    """benchmarks/bench_serving.py's load loop, briefly, on the tiny bundle: its numbers come out and nothing fails."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serving.py"
    spec = importlib.util.spec_from_file_location("bench_serving", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.drive(server, 3, 1.0, server.scheduler.counts, 10)
    assert r["errors"] == 0 and r["requests"] > 0 and r["images_per_s"] > 0
    assert r["p50"] <= r["p99"] and set(r["per_count"]) == {16, 32, 64}
