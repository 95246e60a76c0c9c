#!/usr/bin/env python3
"""Per-step overhead of the runtime (everything but the engine calls) on CPU.

    python benchmarks/bench_runtime_overhead.py [BUNDLE] [--steps 21] [--runs 3]

BUNDLE defaults to the README's bundle (engines/SiT-S-2-256-random: SiT-S/2 at 256, built by
`medexport build`). Batch 2 without guidance, ODE Euler, the 16 -> 32 -> 64 schedule on ONNX Runtime. Two
measures, side by side:

- trace: 1 - (sum of the engine calls timed inside the pipeline) / (wall time of the whole sample call);
- bare: the same engine calls made in a plain loop, without sampler, schedule or trace, against the pipeline's
  wall time (what the runtime adds on top of the engines, measured from outside).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medexport import Pipeline  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", default="engines/SiT-S-2-256-random")
    p.add_argument("--steps", type=int, default=21, help="ODE grid points (steps - 1 evaluations)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--schedule", default="16:0.3,32:0.7,64")
    args = p.parse_args()
    pipe = Pipeline.from_bundle(args.bundle, backend="onnxruntime")
    kw = dict(seed=0, sampler="ode", method="euler", steps=args.steps, schedule=args.schedule)
    labels = [1, 2]
    result = pipe.sample(labels, **kw)  # warm-up
    calls = [(e.mediators, e.t) for e in result.trace]
    c = pipe.config
    x = torch.randn(2, c.in_channels, c.input_size, c.input_size)
    y = torch.tensor(labels)
    wall, trace_frac, bare = [], [], []
    for _ in range(args.runs):
        r = pipe.sample(labels, **kw)
        wall.append(r.seconds)
        trace_frac.append(1 - r.engine_ms() / 1e3 / r.seconds)
        t0 = time.perf_counter()
        for n, t in calls:  # the same engine calls, nothing else
            pipe.runners[n](x, torch.full((2,), t), y)
        bare.append(time.perf_counter() - t0)
    # minima: the least-disturbed run of each (machine noise only ever adds time)
    w, b = min(wall), min(bare)
    steps = len(calls)
    print(
        f"{args.bundle}: {steps} steps, batch 2, ONNX Runtime, schedule {args.schedule}, best of {args.runs} "
        f"(trace: median)"
    )
    print(
        f"{'pipeline wall s':>16} {'bare engine loop s':>19} {'step ms':>8} {'overhead/step ms':>17} "
        f"{'overhead (bare)':>16} {'overhead (trace)':>17}"
    )
    print(
        f"{w:>16.3f} {b:>19.3f} {1e3 * w / steps:>8.1f} {1e3 * (w - b) / steps:>17.2f} "
        f"{100 * (w - b) / w:>15.2f}% {100 * statistics.median(trace_frac):>16.2f}%"
    )


if __name__ == "__main__":
    main()
