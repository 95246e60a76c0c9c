#!/usr/bin/env python3
"""The GPU table: a mediator schedule against the vanilla twin, per image size, measured by ``medexport bench``'s
own code (:func:`medexport.bench.compare_pipelines`) on random-weight models made in memory.

    python benchmarks/bench_gpu_pipeline.py [--sizes 256,512,1024] [--size-settings 1024:batch=4,steps=20]
        [--backend torch|inductor] [--profile] [--out DIR]

Per image size: SiT-XL/2 with the schedule's mediator counts (``16:0.3,32:0.7,64``) and the vanilla twin (full
self-attention through SDPA, ``attention="full"``), random weights made on the device in ``--precision`` (speed
does not depend on the weights), both sampling the same labels from the same noise: ODE Euler with ``--steps``
model evaluations, guidance scale 4 (each forward runs 2 x ``--batch``). Both sides run the same way:

    torch      the PyTorch models through CUDA graphs (one graph per count and batch, captured before timing)
    inductor   torch.compile (inductor, CUDA graphs), compiled before timing; start-up and cache hits reported

It prints, per size, ``medexport bench``'s tables (ceilings measured in the run, ms per forward per count with
TFLOP/s and model FLOP utilisation, the attention part against the copy bandwidth, images/s end to end against
the FLOPs-predicted ratio, start-up, and with --profile the op-by-op profile), then one row of the summary table
as each size finishes; ``--out`` also gets each size's report (JSON) and the summary (Markdown).

Why models in memory and not ``medexport bench`` on built bundles: a bundle is built through an ONNX export of
every count (minutes for SiT-XL/2, and onnx is not installed on the GPU machines), and ``medexport``'s command
line needs click and rich; this script needs torch and numpy only, and runs from a checkout (``PYTHONPATH=.``).
The measurement, the tables and their words are the same code as ``medexport bench --device cuda``'s.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

try:
    import numpy  # noqa: F401  (the models' position embeddings)
    import torch

    import medexport
    from medexport.backend.inductor.runner import CompiledRunner
    from medexport.backend.pytorch.runner import TorchRunner
    from medexport.bench import BenchSettings, bench_tables, compare_pipelines
    from medexport.core.config import FULL
    from medexport.core.request import SampleRequest
    from medexport.core.schedule_text import parse_schedule
    from medexport.errors import MedexportError
    from medexport.model.engine_graph import TORCH_DTYPES
    from medexport.runtime.pipeline import Pipeline, check_device
except ImportError as e:
    sys.exit(
        f"bench_gpu_pipeline.py: cannot import {e.name or e}: it needs torch and numpy (and this checkout's "
        f"medexport on the path); nothing was measured"
    )

SCHEDULE = "16:0.3,32:0.7,64"
SIZE_FIELDS = ("batch", "steps")
SUMMARY_HEADER = (
    "| image | backend | batch | steps | schedule img/s | vanilla img/s | ratio | FLOPs-predicted | "
    "schedule MFU | vanilla MFU |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def parse_size_settings(text: str) -> dict[int, dict[str, int]]:
    """``"1024:batch=4,steps=20;512:steps=30"`` -> {1024: {"batch": 4, "steps": 20}, 512: {"steps": 30}}."""
    out: dict[int, dict[str, int]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        size, _, fields = part.partition(":")
        try:
            out[int(size)] = {}
            for field in fields.split(","):
                name, _, value = field.partition("=")
                if name.strip() not in SIZE_FIELDS or int(value) < 1:
                    raise ValueError(field)
                out[int(size)][name.strip()] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--size-settings {text!r}: expected SIZE:batch=N,steps=N[;SIZE:...] with positive integers "
                f"(fields: {', '.join(SIZE_FIELDS)})"
            ) from None
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--model", default="SiT-XL/2", help="named model config [default: SiT-XL/2]")
    p.add_argument("--depth", type=int, default=None, help="override the model's depth (a small model for smoke runs)")
    p.add_argument("--sizes", default="256,512,1024", help="image sizes, in the order they run")
    p.add_argument("--batch", type=int, default=8, help="images per run (each forward runs twice that: guidance)")
    p.add_argument("--steps", type=int, default=50, help="ODE Euler model evaluations")
    p.add_argument(
        "--size-settings",
        type=parse_size_settings,
        default={},
        help='per-size batch/steps, e.g. "1024:batch=4,steps=20" (said in the output)',
    )
    p.add_argument("--schedule", default=SCHEDULE, help=f"the mediator schedule [default: {SCHEDULE}]")
    p.add_argument(
        "--backend",
        choices=("torch", "inductor"),
        default="torch",
        help="torch: CUDA graphs; inductor: torch.compile (CUDA graphs too) [default: torch]",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", choices=sorted(TORCH_DTYPES), default="bf16")
    p.add_argument("--runs", type=int, default=2, help="timed end-to-end runs of each side")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of per-forward calls")
    p.add_argument("--warmup", type=int, default=1, help="untimed end-to-end runs of each side")
    p.add_argument("--profile", action="store_true", help="also profile one forward of each side, op by op")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of PyTorch [default: all cores]")
    p.add_argument("--out", type=Path, default=None, help="folder for each size's report.json and summary.md")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(v) for v in args.sizes.split(",") if v]
    except ValueError:
        p.error(f"--sizes {args.sizes!r}: expected image sizes separated by commas")
    if not args.sizes:
        p.error("--sizes names no image size")
    return args


def device_of(name: str) -> str:
    """``cuda`` as ``cuda:N`` (the current GPU), so models made there are found already in place."""
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def make_model(args, n: int, size: int, device: str) -> medexport.MediatorDiT:
    """A seeded random-weight model made on ``device`` (SiT-XL/2 in a second on a GPU, not a minute on its
    CPU), in the run's precision."""
    overrides = {"depth": args.depth} if args.depth else {}
    with torch.device(device):
        model = medexport.create_model(args.model, mediators=n, image_size=size, init="random", seed=n, **overrides)
    return model.to(device=device, dtype=TORCH_DTYPES[args.precision])


def runner(args, model, device: str):
    if args.backend == "inductor":
        return CompiledRunner(model, device=device, precision=args.precision)
    return TorchRunner(model, device=device, precision=args.precision, cuda_graph=True)


def bench_size(args, size: int, device: str) -> dict:
    """``medexport bench``'s report for one image size."""
    overrides = args.size_settings.get(size, {})
    batch, steps = overrides.get("batch", args.batch), overrides.get("steps", args.steps)
    counts = parse_schedule(args.schedule).counts

    def open_mine() -> Pipeline:
        models = {n: make_model(args, n, size, device) for n in counts}
        return Pipeline({n: runner(args, m, device) for n, m in models.items()}, models[counts[0]].config)

    def open_theirs(mine: Pipeline) -> Pipeline:
        return Pipeline(
            {FULL: runner(args, make_model(args, FULL, size, device), device)}, mine.config.with_mediators(FULL)
        )

    labels = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(size)).tolist()
    # ODE grid points as the reference counts them: steps + 1 points make ``steps`` Euler evaluations
    request = SampleRequest(
        labels, seed=0, sampler="ode", method="euler", steps=steps + 1, cfg_scale=4.0, schedule=args.schedule
    )
    settings = BenchSettings(rounds=args.rounds, runs=args.runs, warmup=args.warmup, profile=args.profile)
    report = compare_pipelines(open_mine, open_theirs, request, settings)
    report.update(
        {
            "bundle": f"{args.model} random, {size} px (in memory)",
            "vanilla": f"{args.model} full attention",
            "threads": args.threads,
            "evaluations": steps,
            "images_per_run": batch,
            "size_settings": overrides or None,
        }
    )
    return report


def summary_row(args, size: int, report: dict) -> str:
    e = report["end_to_end"]
    ours, base = e["medexport"], e["vanilla"]

    def mfu(r):
        return "-" if r.get("mfu") is None else f"{100 * r['mfu']:.0f}%"

    changed = " (set for this size)" if report["size_settings"] else ""
    return (
        f"| {size} | {args.backend} | {report['images_per_run']}{changed} | {report['evaluations']} | "
        f"{ours['images_per_second']:.2f} | {base['images_per_second']:.2f} | {e['measured_ratio']:.2f}x | "
        f"{e['predicted_ratio']:.2f}x | {mfu(ours)} | {mfu(base)} |"
    )


def environment(device: str) -> str:
    parts = [f"torch {torch.__version__}"]
    if torch.device(device).type == "cuda":
        parts.insert(0, torch.cuda.get_device_name(device))
        parts.append(f"CUDA {torch.version.cuda}")
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("no triton")
    return ", ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_device(args.device)
    except MedexportError as e:
        print(f"bench_gpu_pipeline.py: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_of(args.device)
    print(
        f"# {args.model}{f' (depth {args.depth})' if args.depth else ''}: schedule {args.schedule} against the "
        f"vanilla twin, {args.backend} {args.precision} on {device}\n\n{environment(device)}; guidance 4 (each "
        f"forward runs 2 x batch), ODE Euler\n",
        flush=True,
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    for size in args.sizes:
        t0 = time.perf_counter()
        print(f"## {size} px\n", flush=True)
        try:
            report = bench_size(args, size, device)
        except (MedexportError, RuntimeError) as e:  # one size out of memory or refused: the next still runs
            traceback.print_exc()
            print(f"{size} px FAILED: {e}\n", flush=True)
            failed.append(size)
            continue
        finally:
            gc.collect()  # this size's models, runners and CUDA graphs, before the next size's
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        for table in bench_tables(report):
            print(table.markdown(), flush=True)
        rows.append(summary_row(args, size, report))
        print(f"ROW {rows[-1]}   [{time.perf_counter() - t0:.0f} s]\n", flush=True)
        if args.out:
            (args.out / f"{args.backend}-{size}.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = f"{SUMMARY_HEADER}\n" + "\n".join(rows)
    print(f"## summary ({args.backend} {args.precision}, {environment(device)})\n\n{summary}\n", flush=True)
    if args.out:
        (args.out / f"summary-{args.backend}.md").write_text(summary + "\n")
    if failed:
        print(f"failed sizes: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
