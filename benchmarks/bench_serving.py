"""Serving under load: the in-process sampling server (the step scheduler) driven by 1 / 4 / 16 / 64 clients.

Each client is a closed loop (submit, wait, submit again) of requests mixing schedules, step counts, guidance
scales and 1-2 images, for ``--seconds`` per level. Printed per level: images/s, p50 / p95 / p99 latency, rows per
forward per mediator count, and beside them the in-process baseline at the same thread count (one batch-16
request of the bundle's recommended settings: its images/s and its latency).

    python benchmarks/bench_serving.py --bundle engines/fashion-mnist-demo --threads 2

Targets (issue 26, CPU, the shipped demo): 16 clients >= 2x one client's images/s and >= 0.9x the in-process
batch-16 throughput; >= 10 rows per forward on average; p99 <= 2x the lone batch-16 request's latency.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medexport.core.request import SampleRequest  # noqa: E402
from medexport.core.scheduler import SchedulerLimits  # noqa: E402
from medexport.serve.server import SamplingServer  # noqa: E402


def mixed_requests(counts: list[int], num_classes: int, seed: int):
    """An endless, seeded stream of requests: schedules over the bundle's counts, steps, guidance, 1-2 images."""
    lo, mid, hi = counts[0], counts[len(counts) // 2], counts[-1]
    schedules = [f"{lo}:0.3,{mid}:0.6,{hi}", str(hi), f"{mid}:0.5,{hi}", f"{lo}:0.5,{hi}"]
    rng = random.Random(seed)
    i = 0
    while True:
        i += 1
        images = rng.choice((1, 2))
        yield SampleRequest(
            [rng.randrange(num_classes) for _ in range(images)],
            seed=seed * 1_000_003 + i,
            sampler="ode",
            method="euler",
            steps=rng.choice((14, 20, 26)),
            cfg_scale=rng.choice((1.5, 2.0, 3.0)),
            schedule=rng.choice(schedules),
        )


def baseline(bundle: str, threads: int, runs: int) -> dict:
    """In-process batch 16 at the recommended settings: Pipeline (torch) where it imports, else LitePipeline."""
    try:
        from medexport import Pipeline

        pipe, kind = Pipeline.from_bundle(bundle, backend="onnxruntime", threads=threads), "Pipeline"
    except ImportError:
        from medexport.lite import LitePipeline

        pipe, kind = LitePipeline.from_bundle(bundle, threads=threads), "LitePipeline"
    request = SampleRequest([i % 10 for i in range(16)], seed=0)
    pipe.warmup(request)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        pipe.run(request)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"kind": kind, "images_per_s": 16 / best, "latency_s": best, "median_latency_s": float(np.median(times))}


def drive(server: SamplingServer, clients: int, seconds: float, counts: list[int], num_classes: int) -> dict:
    server.scheduler.reset_stats()
    latencies, images, errors = [], [0], []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        stream = mixed_requests(counts, num_classes, seed=k + 1)
        while time.perf_counter() < stop_at:
            request = next(stream)
            t0 = time.perf_counter()
            try:
                server.sample(request, timeout=300)
            except Exception as e:  # noqa: BLE001 - counted and printed: a benchmark reports failures
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                images[0] += len(request.labels)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    stats = server.scheduler.stats.to_dict()
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {
        "clients": clients,
        "images_per_s": images[0] / elapsed,
        "requests": len(latencies),
        "errors": len(errors),
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
        "rows_per_forward": stats["rows_per_forward"],
        "per_count": {n: c["rows_per_forward"] for n, c in stats["counts"].items()},
        "engine_share": sum(c["ms"] for c in stats["counts"].values()) / 1e3 / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="engines/fashion-mnist-demo")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (server and baseline alike)")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--seconds", type=float, default=10.0, help="per client level")
    ap.add_argument("--max-batch", type=int, default=None, help="rows per forward (default: the engines' maximum)")
    ap.add_argument("--baseline-runs", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    base = baseline(args.bundle, args.threads, args.baseline_runs)
    print(
        f"in-process {base['kind']} batch 16, {args.threads} threads: {base['images_per_s']:.2f} images/s, "
        f"lone batch-16 latency {base['latency_s']:.3f} s"
    )
    limits = SchedulerLimits(max_batch=args.max_batch, max_queue=1024, max_active=64)
    server = SamplingServer.from_bundle(args.bundle, threads=args.threads, limits=limits)
    sched = server.scheduler
    counts = sched.counts
    print(
        f"server ready: counts {counts}, rows per forward at most {sched.max_batch}, warm-up "
        f"{sum(server.warmup_seconds.values()):.1f} s"
    )
    rows = []
    try:
        for clients in (int(c) for c in args.clients.split(",")):
            r = drive(server, clients, args.seconds, counts, sched.shape.num_classes)
            rows.append(r)
            per = " ".join(f"{n}:{v:.1f}" for n, v in r["per_count"].items())
            print(
                f"{clients:>3} clients: {r['images_per_s']:6.2f} images/s ({r['images_per_s'] / base['images_per_s']:.2f}x "
                f"batch 16) | p50 {r['p50']:.3f} p95 {r['p95']:.3f} p99 {r['p99']:.3f} s | rows/forward "
                f"{r['rows_per_forward']:.1f} ({per}) | {r['requests']} requests, {r['errors']} errors, engines busy {r['engine_share']:.0%}",
                flush=True,
            )
    finally:
        server.stop()
    by = {r["clients"]: r for r in rows}
    if 1 in by and 16 in by:
        r16 = by[16]
        print(
            f"16 clients: {r16['images_per_s'] / by[1]['images_per_s']:.2f}x one client (target >= 2), "
            f"{r16['images_per_s'] / base['images_per_s']:.2f}x in-process batch 16 (>= 0.9), "
            f"{r16['rows_per_forward']:.1f} rows per forward (>= 10), p99 {r16['p99'] / base['latency_s']:.2f}x "
            f"the lone batch-16 request (<= 2)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "baseline": base, "levels": rows}, indent=2))


if __name__ == "__main__":
    main()
