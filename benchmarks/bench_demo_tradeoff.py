#!/usr/bin/env python
"""The paper's trade-off in miniature: judge quality against cost for static, fixed dynamic and adaptive
mediator schedules of a demo bundle, all on the same noise and labels, in one run.

    python benchmarks/bench_demo_tradeoff.py --per-class 50 --threads 1
    python benchmarks/bench_demo_tradeoff.py --bundle engines/fashion-mnist-p2-demo --seeds 0,1,2
    # one process per seed (two cores), then the runs merged into one table and plot:
    python benchmarks/bench_demo_tradeoff.py --bundle engines/fashion-mnist-p2-demo --seeds 0 --out /tmp/s0 &
    python benchmarks/bench_demo_tradeoff.py --bundle engines/fashion-mnist-p2-demo --seeds 1 --out /tmp/s1; wait
    python benchmarks/bench_demo_tradeoff.py --merge /tmp/s0/*_tradeoff.json /tmp/s1/*_tradeoff.json

The schedules come from the bundle's counts (a, b, c smallest first): each static one, the fixed
``a:0.3,b:0.6,c``, ``a:0.5,c``, ``b:0.5,c``, ``a:0.7,c``, ``a:0.5,b`` and four adaptive ratio pairs. With several
seeds each is judged once per seed: the table gives the accuracy over all images with its standard error
(binomial) and the FD's mean and spread (standard deviation over seeds), so a difference between counts can be
told from noise. Prints the table (with the full-attention model's cost for scale) and writes
``benchmarks/results/<bundle>_tradeoff.json`` and ``.png`` (``demo_tradeoff.*`` for the default demo); the plot
draws the error bars and the full-attention cost. ``--merge`` (or ``--replot`` with one file) rebuilds the table
and plot from earlier runs' JSON without sampling. Build the bundle first: ``medexport build`` (``--demo NAME``
for another demo).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The reference sweeps r1 in {1.0, 0.9, ...} with r2 below it; a diagonal of that grid.
ADAPTIVE_RATIOS = [(1.0, 0.9), (0.9, 0.7), (0.7, 0.5), (0.5, 0.3)]


def fixed_schedules(counts: list[int]) -> list[str]:
    """Fixed schedules of three counts (smallest first), few mediators early: for 4, 8, 16 the demo's own five."""
    a, b, c = sorted(counts)[:1] + sorted(counts)[1:-1][:1] + sorted(counts)[-1:]
    return [f"{a}:0.3,{b}:0.6,{c}", f"{a}:0.5,{c}", f"{b}:0.5,{c}", f"{a}:0.7,{c}", f"{a}:0.5,{b}"]


KINDS = ("static", "fixed", "adaptive")


def plans(counts: list[int], per_sample: bool, kinds: tuple[str, ...] = KINDS) -> list[tuple[str, str]]:
    suffix = ":per-sample" if per_sample else ""
    every = (
        [("static", str(n)) for n in counts]
        + [("fixed", s) for s in fixed_schedules(counts)]
        + [
            ("adaptive", f"adaptive:{','.join(map(str, counts))}:ratios={r1},{r2}{suffix}")
            for r1, r2 in ADAPTIVE_RATIOS
        ]
    )
    return [(kind, schedule) for kind, schedule in every if kind in kinds]


def aggregate(row: dict, images_per_seed: int) -> dict:
    """A row's statistics over its seeds: accuracy over all images with its binomial standard error, the FD's
    mean and its standard deviation over seeds."""
    accs, fds = row["accuracy_per_seed"], row["fd_per_seed"]
    accuracy = statistics.mean(accs)
    return {
        **row,
        "accuracy": accuracy,
        "accuracy_se": math.sqrt(accuracy * (1 - accuracy) / (images_per_seed * len(accs))),
        "fd": statistics.mean(fds),
        "fd_sd": statistics.stdev(fds) if len(fds) > 1 else None,
        "ms_per_image": statistics.mean(row["ms_per_image_per_seed"]),
    }


def measure(args) -> dict:
    import torch

    import medexport
    from medexport.core.request import SampleRequest
    from medexport.judge.evaluate import evaluate, floor_for
    from medexport.model import forward_flops
    from medexport.runtime.report import cpu_flags

    torch.set_num_threads(args.threads)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    pipe = medexport.Pipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads)
    base = pipe.defaults
    counts = pipe.counts
    images = 10 * args.per_class
    # every engine opened and run first, so that no schedule's ms include a session's start or first run
    pipe.warmup(SampleRequest([i % 10 for i in range(min(images, 100))], settings=base))
    rows = []
    start = time.perf_counter()
    for kind, schedule in plans(counts, args.per_sample, args.kinds):
        runs = [evaluate(pipe, base.override(schedule=schedule), per_class=args.per_class, seed=seed) for seed in seeds]
        row = aggregate(
            {
                "kind": kind,
                **runs[0].to_dict(),
                "seeds": seeds,
                "accuracy_per_seed": [x.accuracy for x in runs],
                "fd_per_seed": [x.fd for x in runs],
                "ms_per_image_per_seed": [x.ms_per_image for x in runs],
            },
            images,
        )
        rows.append(row)
        print(row_line(row), flush=True)
    floor = floor_for(images)
    evals = sum(rows[0]["steps_per_count"].values()) if rows[0]["steps_per_count"] else None
    full = forward_flops(pipe.config, attention="full") / 1e9 * (2 if base.resolved().guided else 1)
    env = {
        "bundle": Path(args.bundle).name,
        "cpu_flags": cpu_flags(),
        "threads": args.threads,
        "backend": pipe.backend,
        "torch": torch.__version__,
        "sampling": base.describe(),
        "images_per_seed": images,
        "images_per_schedule": images * len(seeds),
        "seeds": seeds,
        "tokens": pipe.config.num_tokens,
        "counts": counts,
        "full_attention_gflops_per_image": round(full * evals, 4) if evals else None,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return {"environment": env, "rows": rows, "real_floor": floor.to_dict() if floor else None}


#: What a row holds per seed, in the order of its seeds; a merge concatenates them.
PER_SEED = ("seeds", "accuracy_per_seed", "fd_per_seed", "ms_per_image_per_seed")


def merge(runs: list[tuple[Path, dict]]) -> dict:
    """One result from several runs of the same bundle and settings on different seeds. A schedule judged by
    only some of the runs (``--kinds static`` for more seeds of the static counts, say) is merged over those."""
    (first_path, first), rest = runs[0], runs[1:]
    env = dict(first["environment"])
    same = ("bundle", "sampling", "tokens", "counts", "images_per_seed", "backend", "threads")
    for path, run in rest:
        other = run["environment"]
        diff = [k for k in same if other.get(k) != env.get(k)]
        if diff:
            raise SystemExit(
                f"error: {path} is another run than {first_path}: "
                + ", ".join(f"{k} {other.get(k)!r} there, {env.get(k)!r} here" for k in diff)
                + ". Merge only runs of one bundle with the same settings."
            )
        shared = set(other["seeds"]) & set(env["seeds"])
        if shared:
            raise SystemExit(
                f"error: {path} repeats seed(s) {sorted(shared)} of the runs before it: merge runs of different seeds"
            )
        env["seeds"] = env["seeds"] + other["seeds"]
    merged: dict[str, dict] = {}
    for _, run in runs:
        for row in run["rows"]:
            into = merged.setdefault(row["schedule"], {**row, **{k: [] for k in PER_SEED}})
            for key in PER_SEED:
                into[key] = into[key] + row[key]
    rows = [aggregate(row, env["images_per_seed"]) for row in merged.values()]
    env["images_per_schedule"] = env["images_per_seed"] * len(env["seeds"])
    env["seconds"] = [run["environment"]["seconds"] for _, run in runs]  # the runs' own wall times
    return {"environment": env, "rows": rows, "real_floor": first["real_floor"]}


def row_line(row: dict) -> str:
    spread = f" +- {row['fd_sd']:.2f}" if row.get("fd_sd") is not None else ""
    return (
        f"{row['kind']:8s} {row['schedule']:55s} acc {100 * row['accuracy']:5.1f}% +- "
        f"{100 * row['accuracy_se']:.1f}  FD {row['fd']:7.2f}{spread}  {row['gflops_per_image']:.4f} GFLOPs  "
        f"{row['ms_per_image']:6.2f} ms/img  {row['steps_per_count']}"
    )


def summary(out: dict) -> list[str]:
    """What the run says: the largest against the smallest static count, and the dynamic schedules that match
    the largest at fewer GFLOPs."""
    env, rows, floor = out["environment"], out["rows"], out["real_floor"]
    counts = env["counts"]
    static = {r["schedule"]: r for r in rows if r["kind"] == "static"}
    largest, smallest = static[str(max(counts))], static[str(min(counts))]
    lines = []
    if floor:
        lines.append(f"real images ({floor['images']}): acc {100 * floor['accuracy']:.1f}%  FD {floor['fd']:.2f}")
    lines.append(
        f"largest static ({largest['schedule']}): acc {100 * largest['accuracy']:.1f}%  FD "
        f"{largest['fd']:.2f}  {largest['gflops_per_image']:.4f} GFLOPs; full attention would cost "
        f"{env['full_attention_gflops_per_image']}"
    )
    gap = largest["accuracy"] - smallest["accuracy"]
    se = math.hypot(largest["accuracy_se"], smallest["accuracy_se"])
    lines.append(
        f"smallest static ({smallest['schedule']}) against the largest: accuracy {100 * -gap:+.1f} points "
        f"({-gap / se if se else float('inf'):+.1f} standard errors), FD {smallest['fd'] - largest['fd']:+.2f}"
    )
    by_seed = paired(smallest, largest, "accuracy_per_seed")
    if by_seed and by_seed[2]:
        diffs, mean, sem = by_seed
        lines.append(
            f"  accuracy paired by seed, smallest minus largest: "
            f"{', '.join(f'{100 * d:+.1f}' for d in diffs)} points; mean {100 * mean:+.2f} +- {100 * sem:.2f} "
            f"(standard error; {mean / sem:+.1f} of them)"
        )
    by_seed = paired(smallest, largest)
    if by_seed:
        diffs, mean, sem = by_seed
        lines.append(
            f"  FD paired by seed (same noise and labels), smallest minus largest: "
            f"{', '.join(f'{d:+.2f}' for d in diffs)}; mean {mean:+.2f}"
            + (f" +- {sem:.2f} (standard error; {mean / sem:+.1f} of them)" if sem else "")
        )

    def matches(r: dict) -> bool:  # against the largest count on the seeds ``r`` was judged on
        acc, fd = on_seeds(largest, r["seeds"])
        return (
            r["gflops_per_image"] < largest["gflops_per_image"] and r["accuracy"] >= acc - 0.01 and r["fd"] <= fd * 1.05
        )

    better = [r for r in rows if r["kind"] != "static" and matches(r)]
    lines.append(
        "dynamic schedules within 1 point of its accuracy and 5% of its FD (on the same seeds) at fewer GFLOPs: "
        + (
            ", ".join(f"{r['schedule']} ({r['gflops_per_image'] / largest['gflops_per_image']:.1%})" for r in better)
            or "none"
        )
    )
    return lines


def on_seeds(row: dict, seeds: list[int]) -> tuple[float, float]:
    """A row's mean accuracy and FD over those of ``seeds`` it was judged on."""
    picked = [(a, f) for seed, a, f in zip(row["seeds"], row["accuracy_per_seed"], row["fd_per_seed"]) if seed in seeds]
    return statistics.mean(a for a, _ in picked), statistics.mean(f for _, f in picked)


def paired(a: dict, b: dict, key: str = "fd_per_seed") -> tuple[list[float], float, float | None] | None:
    """A per-seed value (``key``: FD by default) of ``a`` minus that of ``b`` on each seed both were judged on
    (each seed: the same noise and labels for both), their mean and its standard error: the spread of FD
    between seeds is mostly the images drawn, which a paired difference cancels."""
    of_b = dict(zip(b["seeds"], b[key]))
    diffs = [v - of_b[seed] for seed, v in zip(a["seeds"], a[key]) if seed in of_b]
    if not diffs:
        return None
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return diffs, statistics.mean(diffs), sem


def markdown(out: dict) -> str:
    env, rows = out["environment"], out["rows"]
    default = env["sampling"].rsplit("schedule ", 1)[-1]
    lines = [
        "| kind | schedule | images | accuracy (+- s.e.) | FD (+- spread over seeds) | GFLOPs / image "
        "| ms / image | steps per count |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        name = r["schedule"] + (" (the default)" if r["schedule"] == default else "")
        spread = f" +- {r['fd_sd']:.2f}" if r.get("fd_sd") is not None else ""
        per = ", ".join(f"{k}: {v}" for k, v in r["steps_per_count"].items())
        images = env["images_per_seed"] * len(r["seeds"])
        lines.append(
            f"| {r['kind']} | {name} | {images} | {100 * r['accuracy']:.1f}% +- {100 * r['accuracy_se']:.1f} "
            f"| {r['fd']:.2f}{spread} | {r['gflops_per_image']:.4f} | {r['ms_per_image']:.1f} | {per} |"
        )
    if env.get("full_attention_gflops_per_image"):
        lines.append(
            f"| full attention | (cost only) | - | - | - | {env['full_attention_gflops_per_image']:.4f} | - | - |"
        )
    floor = out["real_floor"]
    if floor:
        lines.append(
            f"| real images | training images vs the test statistics | {floor['images']} "
            f"| {100 * floor['accuracy']:.1f}% | {floor['fd']:.2f} | - | - | - |"
        )
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    """Accuracy and FD against GFLOPs, with error bars and the full-attention cost; with several seeds a third
    panel: each schedule's FD minus the largest static count's on the same seeds (paired, so the spread of FD
    between image sets cancels), with its standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env, rows, floor = out["environment"], out["rows"], out["real_floor"]
    largest = next(r for r in rows if r["kind"] == "static" and r["schedule"] == str(max(env["counts"])))
    fd_vs_largest = {r["schedule"]: paired(r, largest) for r in rows} if len(largest["seeds"]) > 1 else {}
    panels = [("accuracy", "judge accuracy (%)"), ("fd", "FD (judge features; lower is better)")]
    if fd_vs_largest:
        panels.append(("paired", f"FD minus static {largest['schedule']}'s, same seeds"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4))
    styles = {"static": ("s", "black"), "fixed": ("o", "tab:blue"), "adaptive": ("^", "tab:orange")}
    full = env.get("full_attention_gflops_per_image")
    default = env["sampling"].rsplit("schedule ", 1)[-1]

    def value(r, key):
        if key == "accuracy":
            return 100 * r["accuracy"], 100 * r["accuracy_se"]
        if key == "fd":
            return r["fd"], r.get("fd_sd") or 0.0
        p = fd_vs_largest.get(r["schedule"])
        return (p[1], p[2] or 0.0) if p else (None, None)

    for ax, (key, label) in zip(axes, panels):
        for kind, (marker, colour) in styles.items():
            pts = [(r, *value(r, key)) for r in rows if r["kind"] == kind]
            pts = [(r, v, e) for r, v, e in pts if v is not None]
            ax.errorbar(
                [r["gflops_per_image"] for r, _, _ in pts],
                [v for _, v, _ in pts],
                yerr=[e for _, _, e in pts],
                fmt=marker,
                color=colour,
                label=kind,
                ms=6,
                capsize=3,
                elinewidth=1,
            )
            for r, v, _ in pts:  # name the static counts and the default; the table names the rest
                if kind == "static" or r["schedule"] == default:
                    ax.annotate(
                        r["schedule"] + (" (default)" if r["schedule"] == default else ""),
                        (r["gflops_per_image"], v),
                        fontsize=7,
                        xytext=(4, 4),
                        textcoords="offset points",
                    )
        if floor is not None and key != "paired":
            ax.axhline((100 if key == "accuracy" else 1) * floor[key], ls="--", c="grey", lw=1, label="real images")
        if key == "paired":
            ax.axhline(0, c="grey", lw=0.8)
        if full:
            ax.axvline(full, ls=":", c="tab:red", lw=1.2, label=f"full attention ({full:.2f} GFLOPs)")
        ax.set_xlabel("GFLOPs per image (guidance included)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    seeds = env["seeds"]
    bars = (
        f"bars: accuracy s.e., FD spread over {len(seeds)} seeds, paired difference s.e."
        if fd_vs_largest
        else "bars: accuracy s.e."
    )
    fig.suptitle(
        f"{env.get('bundle', 'demo')}, {env['tokens']} tokens: quality against cost "
        f"({env['sampling'].rsplit(', schedule', 1)[0]}; {bars})",
        fontsize=9,
    )
    fig.tight_layout()
    tmp = path.with_name(path.name + ".partial")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def write(out: dict, folder: Path, stem: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    js, png = folder / f"{stem}_tradeoff.json", folder / f"{stem}_tradeoff.png"
    tmp = js.with_name(js.name + ".partial")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(js)
    plot(out, png)
    return js, png


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=ROOT / "engines" / "fashion-mnist-demo")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each schedule is judged once per seed")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--per-sample", action="store_true", help="adaptive decisions per image instead of per batch")
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="which schedules to judge: static, fixed, adaptive (comma-separated; default all)",
    )
    p.add_argument(
        "--merge",
        "--replot",
        nargs="+",
        type=Path,
        metavar="JSON",
        default=None,
        help="instead of sampling: the table and plot of earlier runs' JSON, merged when they are runs "
        "of one bundle and settings on different seeds",
    )
    args = p.parse_args()
    args.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown or not args.kinds:
        p.error(f"--kinds takes {', '.join(KINDS)}; got {', '.join(unknown) or 'none'}")
    if args.merge:
        runs = []
        for path in args.merge:
            try:
                runs.append((path, json.loads(path.read_text())))
            except (OSError, json.JSONDecodeError) as e:
                raise SystemExit(f"error: cannot read {path} as a trade-off run's JSON ({e})") from None
        out = merge(runs)
        for row in out["rows"]:
            print(row_line(row))
    else:
        out = measure(args)
    name = out["environment"].get("bundle") or Path(args.bundle).name
    stem = "demo" if name == "fashion-mnist-demo" else name
    js, png = write(out, args.out, stem)
    print("\n" + json.dumps({k: v for k, v in out["environment"].items() if k != "counts"}))
    print("\n".join(summary(out)))
    print("\n" + markdown(out))
    print(f"\nwrote {js}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
