#!/usr/bin/env python
"""The paper's trade-off in miniature: judge quality against cost for static, fixed dynamic and adaptive
mediator schedules of the demo bundle, all on the same noise and labels, in one run.

    python benchmarks/bench_demo_tradeoff.py --per-class 50 --threads 1

Prints a table (accuracy, FD, GFLOPs and ms per image, steps per count), and writes
``benchmarks/results/demo_tradeoff.json`` and a plot of quality against cost
(``benchmarks/results/demo_tradeoff.png``). Build the bundle first: ``medexport build``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import medexport  # noqa: E402
from medexport.judge.evaluate import evaluate, floor_for  # noqa: E402
from medexport.runtime.report import cpu_flags  # noqa: E402

FIXED = ["4:0.3,8:0.6,16", "4:0.5,16", "8:0.5,16", "4:0.7,16", "4:0.5,8"]
# The reference sweeps r1 in {1.0, 0.9, ...} with r2 below it; a diagonal of that grid.
ADAPTIVE_RATIOS = [(1.0, 0.9), (0.9, 0.7), (0.7, 0.5), (0.5, 0.3)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "engines" / "fashion-mnist-demo")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--per-sample", action="store_true", help="adaptive decisions per image instead of per batch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    pipe = medexport.Pipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads)
    base = pipe.defaults
    counts = pipe.counts
    adaptive_suffix = ":per-sample" if args.per_sample else ""
    plans = ([("static", str(n)) for n in counts] + [("fixed", s) for s in FIXED]
             + [("adaptive", f"adaptive:{','.join(map(str, counts))}:ratios={r1},{r2}{adaptive_suffix}")
                for r1, r2 in ADAPTIVE_RATIOS])
    rows = []
    start = time.perf_counter()
    for kind, schedule in plans:
        r = evaluate(pipe, base.override(schedule=schedule), per_class=args.per_class, seed=args.seed)
        rows.append({"kind": kind, **r.to_dict()})
        print(f"{kind:8s} {r.schedule:55s} acc {100 * r.accuracy:5.1f}%  FD {r.fd:7.2f}  "
              f"{r.gflops_per_image:.4f} GFLOPs  {r.ms_per_image:6.2f} ms/img  {r.steps_per_count}", flush=True)
    floor = floor_for(10 * args.per_class)
    env = {"cpu_flags": cpu_flags(), "threads": args.threads, "backend": pipe.backend,
           "torch": torch.__version__, "sampling": base.describe(), "images_per_schedule": 10 * args.per_class,
           "seconds": round(time.perf_counter() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"environment": env, "rows": rows, "real_floor": floor.to_dict() if floor else None}
    (args.out / "demo_tradeoff.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, floor, args.out / "demo_tradeoff.png", env)
    largest = next(r for r in rows if r["kind"] == "static" and r["schedule"] == str(max(counts)))
    better = [r for r in rows if r["kind"] != "static" and r["gflops_per_image"] < largest["gflops_per_image"]
              and r["accuracy"] >= largest["accuracy"] - 0.01 and r["fd"] <= largest["fd"] * 1.05]
    print(f"\n{env}")
    if floor:
        print(f"real images ({floor.images}): acc {100 * floor.accuracy:.1f}%  FD {floor.fd:.2f}")
    print(f"largest static ({largest['schedule']}): acc {100 * largest['accuracy']:.1f}%  FD {largest['fd']:.2f}  "
          f"{largest['gflops_per_image']:.4f} GFLOPs")
    print("dynamic schedules within 1 point of its accuracy and 5% of its FD at fewer GFLOPs: "
          + (", ".join(r["schedule"] for r in better) or "none"))
    print(f"wrote {args.out / 'demo_tradeoff.json'}, {args.out / 'demo_tradeoff.png'}")
    return 0


def plot(rows: list[dict], floor, path: Path, env: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"static": ("s", "black"), "fixed": ("o", "tab:blue"), "adaptive": ("^", "tab:orange")}
    for ax, key, label in ((axes[0], "accuracy", "judge accuracy"), (axes[1], "fd", "FD (judge features)")):
        for kind, (marker, colour) in styles.items():
            pts = [r for r in rows if r["kind"] == kind]
            ax.scatter([r["gflops_per_image"] for r in pts], [r[key] for r in pts], marker=marker, c=colour,
                       label=kind, s=40)
            for r in pts:
                ax.annotate(r["schedule"].replace("adaptive:", "a:").split(":warmup")[0], (r["gflops_per_image"], r[key]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        if floor is not None:
            ax.axhline(getattr(floor, key), ls="--", c="grey", lw=1, label="real images")
        ax.set_xlabel("GFLOPs per image (guidance included)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Fashion-MNIST demo: quality against cost ({env['images_per_schedule']} images per schedule, "
                 f"{env['sampling'].rsplit(', schedule', 1)[0]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
