#!/usr/bin/env python
"""The paper's trade-off in miniature: judge quality against cost for static, fixed dynamic and adaptive
mediator schedules of the demo bundle, all on the same noise and labels, in one run.

    python benchmarks/bench_demo_tradeoff.py --per-class 50 --threads 1
    python benchmarks/bench_demo_tradeoff.py --bundle engines/fashion-mnist-p2-demo --seeds 0,1,2

The schedules come from the bundle's counts (a, b, c smallest first): each static one, the fixed
``a:0.3,b:0.6,c``, ``a:0.5,c``, ``b:0.5,c``, ``a:0.7,c``, ``a:0.5,b`` and four adaptive ratio pairs. With several
``--seeds`` each is judged once per seed: the table gives the accuracy over all images with its standard error
(binomial) and the FD's mean and spread (standard deviation over seeds), so a difference between counts can be
told from noise. Prints the table (with the full-attention model's cost for scale) and writes
``benchmarks/results/<bundle>_tradeoff.json`` and ``.png`` (``demo_tradeoff.*`` for the default demo). Build the
bundle first: ``medexport build`` (``--demo NAME`` for another demo).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import medexport  # noqa: E402
from medexport.judge.evaluate import evaluate, floor_for  # noqa: E402
from medexport.model import forward_flops  # noqa: E402
from medexport.runtime.report import cpu_flags  # noqa: E402

def fixed_schedules(counts: list[int]) -> list[str]:
    """Fixed schedules of three counts (smallest first), few mediators early: for 4, 8, 16 the demo's own five."""
    a, b, c = sorted(counts)[:1] + sorted(counts)[1:-1][:1] + sorted(counts)[-1:]
    return [f"{a}:0.3,{b}:0.6,{c}", f"{a}:0.5,{c}", f"{b}:0.5,{c}", f"{a}:0.7,{c}", f"{a}:0.5,{b}"]
# The reference sweeps r1 in {1.0, 0.9, ...} with r2 below it; a diagonal of that grid.
ADAPTIVE_RATIOS = [(1.0, 0.9), (0.9, 0.7), (0.7, 0.5), (0.5, 0.3)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "engines" / "fashion-mnist-demo")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each schedule is judged once per seed")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--per-sample", action="store_true", help="adaptive decisions per image instead of per batch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    pipe = medexport.Pipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads)
    base = pipe.defaults
    counts = pipe.counts
    adaptive_suffix = ":per-sample" if args.per_sample else ""
    plans = ([("static", str(n)) for n in counts] + [("fixed", s) for s in fixed_schedules(counts)]
             + [("adaptive", f"adaptive:{','.join(map(str, counts))}:ratios={r1},{r2}{adaptive_suffix}")
                for r1, r2 in ADAPTIVE_RATIOS])
    rows = []
    start = time.perf_counter()
    images = 10 * args.per_class
    for kind, schedule in plans:
        runs = [evaluate(pipe, base.override(schedule=schedule), per_class=args.per_class, seed=seed)
                for seed in seeds]
        r = runs[0]
        accuracy = statistics.mean(x.accuracy for x in runs)
        fds = [x.fd for x in runs]
        row = {"kind": kind, **r.to_dict(), "accuracy": accuracy,
               "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / (images * len(runs))),
               "fd": statistics.mean(fds), "fd_sd": statistics.stdev(fds) if len(fds) > 1 else None,
               "fd_per_seed": fds, "accuracy_per_seed": [x.accuracy for x in runs], "seeds": seeds,
               "ms_per_image": statistics.mean(x.ms_per_image for x in runs)}
        rows.append(row)
        spread = f" +- {row['fd_sd']:.2f}" if row["fd_sd"] is not None else ""
        print(f"{kind:8s} {r.schedule:55s} acc {100 * accuracy:5.1f}% +- {100 * row['accuracy_se']:.1f}  "
              f"FD {row['fd']:7.2f}{spread}  {r.gflops_per_image:.4f} GFLOPs  {row['ms_per_image']:6.2f} ms/img  "
              f"{r.steps_per_count}", flush=True)
    floor = floor_for(images)
    evals = sum(rows[0]["steps_per_count"].values()) if rows[0]["steps_per_count"] else None
    full = forward_flops(pipe.config, attention="full") / 1e9 * (2 if base.resolved().guided else 1)
    env = {"cpu_flags": cpu_flags(), "threads": args.threads, "backend": pipe.backend,
           "torch": torch.__version__, "sampling": base.describe(), "images_per_schedule": images,
           "seeds": seeds, "tokens": pipe.config.num_tokens, "counts": counts,
           "full_attention_gflops_per_image": round(full * evals, 4) if evals else None,
           "seconds": round(time.perf_counter() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "demo" if Path(args.bundle).name == "fashion-mnist-demo" else Path(args.bundle).name
    out = {"environment": env, "rows": rows, "real_floor": floor.to_dict() if floor else None}
    (args.out / f"{stem}_tradeoff.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, floor, args.out / f"{stem}_tradeoff.png", env)
    largest = next(r for r in rows if r["kind"] == "static" and r["schedule"] == str(max(counts)))
    better = [r for r in rows if r["kind"] != "static" and r["gflops_per_image"] < largest["gflops_per_image"]
              and r["accuracy"] >= largest["accuracy"] - 0.01 and r["fd"] <= largest["fd"] * 1.05]
    print(f"\n{env}")
    if floor:
        print(f"real images ({floor.images}): acc {100 * floor.accuracy:.1f}%  FD {floor.fd:.2f}")
    print(f"largest static ({largest['schedule']}): acc {100 * largest['accuracy']:.1f}%  FD {largest['fd']:.2f}  "
          f"{largest['gflops_per_image']:.4f} GFLOPs; full attention would cost {env['full_attention_gflops_per_image']}")
    smallest = next(r for r in rows if r["kind"] == "static" and r["schedule"] == str(min(counts)))
    gap, se = largest["accuracy"] - smallest["accuracy"], math.hypot(largest["accuracy_se"], smallest["accuracy_se"])
    print(f"smallest static ({smallest['schedule']}) against the largest: accuracy {100 * gap:+.1f} points "
          f"({gap / se if se else float('inf'):.1f} standard errors), FD {smallest['fd'] - largest['fd']:+.2f}"
          + (f" (spread over seeds {smallest['fd_sd']:.2f} / {largest['fd_sd']:.2f})" if largest["fd_sd"] else ""))
    print("dynamic schedules within 1 point of its accuracy and 5% of its FD at fewer GFLOPs: "
          + (", ".join(r["schedule"] for r in better) or "none"))
    print(f"wrote {args.out / f'{stem}_tradeoff.json'}, {args.out / f'{stem}_tradeoff.png'}")
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
    fig.suptitle(f"Fashion-MNIST demo, {env['tokens']} tokens: quality against cost ({env['images_per_schedule']} images per schedule, "
                 f"{env['sampling'].rsplit(', schedule', 1)[0]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
