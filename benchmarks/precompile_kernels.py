#!/usr/bin/env python3
"""Compile the mediator block's Triton kernels for a set of shapes before they are needed, in parallel.

    python benchmarks/precompile_kernels.py [--tokens 256,1024,4096] [--mediators 16,32,64] [--jobs 8]

Every launch the CUDA op may measure (``medexport.ops.kernels.block_forms.CANDIDATES``) is compiled for each
(token count, mediator count) in its own process, ``--jobs`` at a time; Triton keeps the binaries in its disk
cache (``~/.triton/cache`` or ``TRITON_CACHE_DIR``), so the benchmarks and servers started afterwards load them
instead of compiling them one after another on first use. SiT-XL/2's heads by default (16 x 72). On the CPU,
``--smoke`` runs the same under the Triton interpreter with a tiny shape.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def one(tokens: int, mediators: int, heads: int, head_dim: int, dtype: str, device: str) -> int:
    import torch

    from medexport.ops.kernels.block_forms import precompile

    start = time.perf_counter()
    failed = precompile(tokens, mediators, heads, head_dim, getattr(torch, dtype), device)
    print(
        f"N={tokens} n={mediators}: {time.perf_counter() - start:.1f} s"
        + ("".join(f"\n  not compiled: {f}" for f in failed)),
        flush=True,
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=ints, default=[256, 1024, 4096])
    p.add_argument("--mediators", type=ints, default=[16, 32, 64])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=72)
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--smoke", action="store_true", help="the CPU under the Triton interpreter, one tiny shape")
    p.add_argument("--one", nargs=2, type=int, metavar=("N", "n"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        return one(16, 4, 2, 8, "float32", "cpu")
    if args.one:
        return one(*args.one, args.heads, args.head_dim, args.dtype, "cuda")
    import torch

    if not torch.cuda.is_available():
        print("precompile_kernels: no CUDA device here (use --smoke on the CPU)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    todo = [(N, n) for N in args.tokens for n in args.mediators]
    running: list[subprocess.Popen] = []
    failed = 0
    for N, n in todo:
        while len(running) >= args.jobs:
            failed += running.pop(0).wait() != 0
        running.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    str(N),
                    str(n),
                    "--heads",
                    str(args.heads),
                    "--head-dim",
                    str(args.head_dim),
                    "--dtype",
                    args.dtype,
                ]
            )
        )
    failed += sum(proc.wait() != 0 for proc in running)
    print(f"precompiled {len(todo) - failed} of {len(todo)} shapes in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
