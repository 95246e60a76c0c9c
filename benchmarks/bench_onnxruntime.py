#!/usr/bin/env python3
"""Per-forward latency of the ONNX Runtime engine against the eager PyTorch model, side by side in one run.

    python benchmarks/bench_onnxruntime.py [--models SiT-S/2,SiT-B/2] [--sizes 256,512] [--batch 2] [--repeats 10]

Random weights (latency does not depend on them). Each configuration is exported once to a temporary folder;
then PyTorch and ONNX Runtime are timed alternately (one call each per round) so that machine noise hits both
alike, and the table reports medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import medexport  # noqa: E402
from medexport.backend import OnnxrtRunner, TorchRunner  # noqa: E402
from medexport.export import export_onnx  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="SiT-S/2,SiT-B/2")
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--mediators", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    console = Console()
    table = Table(
        title=f"per-forward latency, batch {args.batch}, {args.mediators} mediators, "
        f"{torch.get_num_threads()} threads (median of {args.repeats})"
    )
    for col in ("model", "image", "PyTorch eager ms", "ONNX Runtime ms", "speed-up"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for size in map(int, args.sizes.split(",")):
                model = medexport.create_model(name, mediators=args.mediators, image_size=size, init="random", seed=0)
                path = export_onnx(model, Path(tmp) / "m.onnx").path
                runners = {"torch": TorchRunner(model), "ort": OnnxrtRunner(path, args.mediators)}
                c = model.config
                x = torch.randn(args.batch, c.in_channels, c.input_size, c.input_size)
                t = torch.rand(args.batch)
                y = torch.randint(0, c.num_classes, (args.batch,))
                times = {k: [] for k in runners}
                for i in range(args.warmup + args.repeats):
                    for k, r in runners.items():
                        t0 = time.perf_counter()
                        r(x, t, y)
                        if i >= args.warmup:
                            times[k].append(time.perf_counter() - t0)
                pt, ort_ms = (statistics.median(times[k]) * 1e3 for k in ("torch", "ort"))
                table.add_row(name, str(size), f"{pt:.1f}", f"{ort_ms:.1f}", f"{pt / ort_ms:.2f}x")
                console.print(f"{name} @ {size}: torch {pt:.1f} ms, onnxruntime {ort_ms:.1f} ms")
                del runners, model
    console.print(table)


if __name__ == "__main__":
    main()
