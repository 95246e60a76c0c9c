#!/usr/bin/env python3
"""The mediator engine against the vanilla SiT engine a user would deploy instead, on this machine's CPU.

    python benchmarks/bench_vanilla.py [--models SiT-S/2,SiT-B/2] [--sizes 256,512,1024] [--precisions fp32,int8]
                                       [--mediators 16] [--threads 1] [--rounds 3]

For every model, image size and precision it builds (or reuses, under ``--engines``) a random-weights mediator
bundle and its vanilla twin (``medexport build --attention full``) with the same exporter and backend, then
measures them with ``medexport bench``'s own code (``medexport.bench.run_bench``): per-forward milliseconds
alternating round by round, and a short end-to-end run of each. Each row prints as it finishes.

Each configuration is measured in a fresh process (so that its peak memory is its own). Results go to
``benchmarks/results/vanilla.json`` keyed by machine (CPU model and flags), and the tables of
every machine measured so far to ``benchmarks/VANILLA.md``: a run on another machine adds its tables and keeps
the earlier ones; a run on the same machine replaces the rows it measured again.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medexport.bench import run_bench  # noqa: E402
from medexport.bundle import BuildSettings, ModelSource, build_bundle  # noqa: E402
from medexport.core.batch import BatchRange  # noqa: E402
from medexport.core.config import FULL  # noqa: E402
from medexport.core.files import write_json, write_text  # noqa: E402
from medexport.core.request import SampleRequest  # noqa: E402
from medexport.runtime.report import cpu_flags  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "vanilla.json"
TABLES = ROOT / "benchmarks" / "VANILLA.md"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def bundles(model: str, size: int, n: int, precision: str, root: Path) -> tuple[Path, Path]:
    """The mediator bundle and its twin for one configuration, built once (a rebuild finds them up to date)."""
    stem = f"{model.replace('/', '-')}-{size}"
    settings = BuildSettings(backend="onnxruntime", precision=precision, batch=BatchRange(1, 2, 4))
    mine, twin = root / f"{stem}-m{n}-{precision}", root / f"{stem}-full-{precision}"
    build_bundle([ModelSource(n, model_name=model, image_size=size)], mine, settings, show_progress=False)
    build_bundle([ModelSource(FULL, model_name=model, image_size=size)], twin, settings, show_progress=False)
    return mine, twin


def measure(model: str, size: int, n: int, precision: str, args) -> dict:
    """One row, measured in a fresh process: its peak memory is then that of these two pipelines alone (in a
    process that ran other configurations before, freed memory is reused and the peaks mean little)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_here, (model, size, n, precision, args))


def measure_here(model: str, size: int, n: int, precision: str, args) -> dict:
    torch.set_num_threads(args.threads)
    mine, twin = bundles(model, size, n, precision, args.engines)
    # End to end: 2 ODE Euler evaluations of 1 image with guidance (a forward batch of 2), the steps' cost only.
    request = SampleRequest([1], seed=0, sampler="ode", method="euler", steps=3, cfg_scale=2.0, cfg_channels="all")
    report = run_bench(
        mine,
        twin,
        request,
        backend="onnxruntime",
        threads=args.threads,
        batch=args.batch,
        rounds=args.rounds,
        runs=1,
        warmup=0,
    )
    rows = {r["mediators"]: r for r in report["forward"]}
    e2e = report["end_to_end"]
    return {
        "model": model,
        "image_size": size,
        "tokens": report["tokens"],
        "mediators": n,
        "precision": precision,
        "threads": args.threads,
        "batch": report["forward_batch"],
        "rounds": args.rounds,
        "mediator_ms": rows[str(n)]["ms"],
        "vanilla_ms": rows["full"]["ms"],
        "mediator_ms_all": rows[str(n)]["ms_all"],
        "vanilla_ms_all": rows["full"]["ms_all"],
        "predicted_ratio": rows[str(n)]["predicted_ratio"],
        "measured_ratio": rows[str(n)]["measured_ratio"],
        "end_to_end_ratio": e2e["measured_ratio"],
        "mediator_peak_mib": round((e2e["medexport"]["peak_memory_bytes"] or 0) / 2**20),
        "vanilla_peak_mib": round((e2e["vanilla"]["peak_memory_bytes"] or 0) / 2**20),
    }


def tables(results: dict) -> str:
    lines = [
        "# CPU: the mediator engine against the vanilla SiT engine",
        "",
        "Written by `python benchmarks/bench_vanilla.py` (random weights: speed does not depend on them). Per",
        "configuration: one mediator bundle and its vanilla twin (`medexport build --attention full`), the same",
        "exporter, backend (ONNX Runtime, CPU) and precision; int8 is dynamic int8 of the MatMul/Gemm weights for",
        "both. ms: median of the per-forward rounds, the two engines called alternately in one process.",
        "`FLOPs predict` = full / mediator multiply-adds per forward; `measured` = vanilla ms / mediator ms;",
        "`% of predicted` = measured / predicted. `end to end`: a 2-evaluation ODE run of each, alternating.",
        "Peak MiB: what each pipeline added to the process's peak resident memory with all its engines open",
        "(one fresh process per row; the vanilla pipeline is opened second, beside the mediator one).",
        "",
    ]
    for machine, entry in results.items():
        lines += [
            f"## {machine}",
            "",
            f"CPU flags: {entry['cpu_flags']}; {entry['environment']}; measured {entry['date']}.",
            "",
            "| model | image | tokens | precision | threads | batch | mediators | mediator ms | vanilla ms | "
            "FLOPs predict | measured | % of predicted | end to end | peak MiB mediator / vanilla |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(entry["rows"], key=lambda r: (r["model"], r["image_size"], r["precision"], r["threads"])):
            lines.append(
                f"| {r['model']} | {r['image_size']} | {r['tokens']} | {r['precision']} | {r['threads']} | "
                f"{r['batch']} | {r['mediators']} | {r['mediator_ms']:.1f} | {r['vanilla_ms']:.1f} | "
                f"{r['predicted_ratio']:.2f}x | {r['measured_ratio']:.2f}x | "
                f"{100 * r['measured_ratio'] / r['predicted_ratio']:.0f}% | {r['end_to_end_ratio']:.2f}x | "
                f"{r['mediator_peak_mib']} / {r['vanilla_peak_mib']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="SiT-S/2,SiT-B/2")
    p.add_argument("--sizes", default="256,512,1024")
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--mediators", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=2, help="engine batch of the per-forward rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip", default="", help="model@size pairs to leave out, e.g. SiT-B/2@1024")
    p.add_argument("--engines", type=Path, default=ROOT / "engines" / "bench")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    machine = f"{cpu_model()} ({cpu_flags()})"
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry = results.setdefault(machine, {"rows": []})
    import onnxruntime

    entry.update(
        cpu_flags=cpu_flags(),
        date=time.strftime("%Y-%m-%d"),
        environment=f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {platform.python_version()}",
    )
    skip = set(filter(None, args.skip.split(",")))
    print(f"{machine}, {args.threads} thread(s)", flush=True)
    for model in args.models.split(","):
        for size in map(int, args.sizes.split(",")):
            if f"{model}@{size}" in skip:
                continue
            for precision in args.precisions.split(","):
                t0 = time.perf_counter()
                row = measure(model, size, args.mediators, precision, args)
                key = (row["model"], row["image_size"], row["precision"], row["threads"], row["mediators"])
                entry["rows"] = [
                    r
                    for r in entry["rows"]
                    if (r["model"], r["image_size"], r["precision"], r["threads"], r["mediators"]) != key
                ] + [row]
                write_json(RESULTS, results)  # after every row: an interrupted run keeps what it measured
                write_text(TABLES, tables(results) + "\n")
                print(
                    f"{model} {size} {precision}: mediator {row['mediator_ms']:.1f} ms, vanilla "
                    f"{row['vanilla_ms']:.1f} ms, measured {row['measured_ratio']:.2f}x, FLOPs predict "
                    f"{row['predicted_ratio']:.2f}x ({100 * row['measured_ratio'] / row['predicted_ratio']:.0f}%), "
                    f"end to end {row['end_to_end_ratio']:.2f}x [{time.perf_counter() - t0:.0f} s]",
                    flush=True,
                )


if __name__ == "__main__":
    main()
