#!/usr/bin/env python
"""int8 on the CPU, side by side: ms per forward of the fp32 engine, each quantised engine and the PyTorch
reference (the paper's model, eager), with output difference and file size; on the shipped demo model also judge
accuracy and FD per precision, and schedule-aware against whole-trajectory calibration.

    python benchmarks/bench_quant.py --threads 1                  # the demo and SiT-S/2, SiT-B/2 at 256 and 512
    python benchmarks/bench_quant.py --models demo --per-class 50
    python benchmarks/bench_quant.py --models demo:fashion-mnist-p2 --per-class 25   # another shipped demo

Every engine is built here through medexport's own build and calibrate (random weights for SiT-S/2 and B/2:
speed does not depend on them; their calibration runs a short ODE trajectory). Timings alternate between the
engines in one run, ``--threads`` threads each. Writes ``benchmarks/results/quant.json`` and prints Markdown
tables (``benchmarks/QUANT.md`` holds one run's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medexport import Pipeline  # noqa: E402
from medexport.backend.onnxrt import session_from_onnx  # noqa: E402
from medexport.bundle import BuildSettings, Bundle, ModelSource, build_bundle  # noqa: E402
from medexport.calibrate import record  # noqa: E402
from medexport.core.batch import BatchRange  # noqa: E402
from medexport.runtime.report import cpu_flags  # noqa: E402

PRECISIONS = ("int8", "int8-static")
CALIBRATION_SAMPLING = {"sampler": "ode", "method": "euler", "steps": 7, "cfg_scale": 4.0}


def build(sources, out: Path, precision: str, batch: BatchRange, calibration: Path | None = None) -> Bundle:
    build_bundle(
        sources,
        out,
        BuildSettings(backend="onnxruntime", precision=precision, batch=batch, calibration=calibration),
        show_progress=False,
    )
    return Bundle(out)


def time_forwards(fns: dict, repeats: int) -> dict[str, float]:
    """Median ms per call of each function, calls alternating between them so machine noise hits all alike."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_table(name: str, bundles: dict[str, Bundle], n: int, batch: int, threads: int, repeats: int) -> dict:
    """One model: every precision's engine for ``n`` mediators and the PyTorch reference on one batch."""
    fp32 = bundles["fp32"]
    cfg = fp32.config(n)
    rng = np.random.default_rng(0)
    # Noise at t = 0.5 for every model (the timing does not depend on the values; the relative L2 is on these).
    feed = {
        "x": rng.standard_normal((batch, cfg.in_channels, cfg.input_size, cfg.input_size), dtype=np.float32),
        "t": np.full(batch, 0.5, np.float32),
        "y": rng.integers(0, cfg.num_classes, batch),
    }
    sessions = {p: session_from_onnx(b.path / b.onnx(n).file, threads=threads) for p, b in bundles.items()}
    torch.set_num_threads(threads)
    reference = fp32.torch_model(n).eval()
    x, t, y = (torch.from_numpy(feed[k]) for k in ("x", "t", "y"))

    def torch_forward():
        with torch.inference_mode():
            return reference(x, t, y)

    fns = {"reference": torch_forward, **{p: (lambda s=s: s.run(None, feed)) for p, s in sessions.items()}}
    ms = time_forwards(fns, repeats)
    base = sessions["fp32"].run(None, feed)[0]
    row = {
        "model": name,
        "mediators": n,
        "batch": batch,
        "ms": {k: round(v, 2) for k, v in ms.items()},
        "speedup_vs_fp32": {p: round(ms["fp32"] / ms[p], 3) for p in bundles},
        "speedup_vs_reference": {p: round(ms["reference"] / ms[p], 3) for p in bundles},
        "rel_l2_vs_fp32": {},
        "mb": {},
    }
    for p, b in bundles.items():
        out = sessions[p].run(None, feed)[0]
        row["rel_l2_vs_fp32"][p] = float(np.linalg.norm(out - base) / np.linalg.norm(base))
        row["mb"][p] = round(b.onnx(n).bytes(b.path) / 1e6, 2)
    return row


def random_model(name: str, size: int, work: Path, threads: int, repeats: int) -> dict:
    n = 16
    sources = [ModelSource(n, model_name=name, image_size=size, seed=0)]
    batch = BatchRange(1, 2, 16)
    tag = f"{name.replace('/', '-')}-{size}"
    bundles = {"fp32": build(sources, work / f"{tag}-fp32", "fp32", batch)}
    t0 = time.perf_counter()
    cal = record(
        bundles["fp32"].path,
        work / f"{tag}-cal",
        schedule=str(n),
        num=2,
        threads=threads,
        sampling=CALIBRATION_SAMPLING,
    )
    cal_s = time.perf_counter() - t0
    bundles["int8"] = build(sources, work / f"{tag}-int8", "int8", batch)
    bundles["int8-static"] = build(sources, work / f"{tag}-int8s", "int8-static", batch, cal.path)
    row = forward_table(f"{name} {size} (random)", bundles, n, 2, threads, repeats)
    row["calibration_seconds"] = round(cal_s, 1)
    return row


def demo(work: Path, threads: int, repeats: int, per_class: int, name: str | None = None) -> tuple[dict, list[dict]]:
    """A shipped demo (``name``; default: the default demo): forward times at its largest count, then judge
    quality per precision with its recommended settings, and both calibration modes."""
    from medexport.core.settings import SamplingSettings
    from medexport.demo import DEFAULT_DEMO, demo_checkpoints, demo_folder
    from medexport.judge.evaluate import evaluate

    name = name or DEFAULT_DEMO
    sources = [ModelSource(n, checkpoint=p) for n, p in demo_checkpoints(folder=demo_folder(name)).items()]
    batch = BatchRange(1, 64, 512)
    bundles = {"fp32": build(sources, work / f"{name}-fp32", "fp32", batch)}
    cals = {}
    for mode in ("schedule", "trajectory"):
        t0 = time.perf_counter()
        cals[mode] = (
            record(bundles["fp32"].path, work / f"{name}-cal-{mode}", mode=mode, threads=threads),
            time.perf_counter() - t0,
        )
    bundles["int8"] = build(sources, work / f"{name}-int8", "int8", batch)
    bundles["int8-static"] = build(sources, work / f"{name}-int8s", "int8-static", batch, cals["schedule"][0].path)
    trajectory = build(sources, work / f"{name}-int8s-traj", "int8-static", batch, cals["trajectory"][0].path)
    largest = max(s.mediators for s in sources)
    tokens = bundles["fp32"].config(largest).num_tokens
    row = forward_table(f"{name} demo ({tokens} tokens, trained)", bundles, largest, 200, threads, repeats)
    row["calibration_seconds"] = {m: round(s, 1) for m, (_, s) in cals.items()}
    quality = []
    sampling = SamplingSettings.from_dict(bundles["fp32"].manifest["sampling"])
    for label, b in [*bundles.items(), ("int8-static (whole-trajectory calibration)", trajectory)]:
        pipe = Pipeline.from_bundle(b.path, backend="onnxruntime", threads=threads)
        r = evaluate(pipe, sampling, per_class=per_class, seed=0)
        quality.append(
            {
                "precision": label,
                "accuracy": r.accuracy,
                "fd": r.fd,
                "ms_per_image": r.ms_per_image,
                "schedule": r.schedule,
                "images": r.images,
            }
        )
        print(f"  {label}: accuracy {100 * r.accuracy:.1f}%, FD {r.fd:.2f}, {r.ms_per_image:.2f} ms/image", flush=True)
    return row, quality


def markdown(rows: list[dict], quality: list[dict], threads: int) -> str:
    lines = [
        f"CPU flags: {cpu_flags()}; {threads} thread(s); ONNX Runtime CPU; one run, engines alternating.",
        "",
        "| model | batch | reference ms | fp32 ms | int8 ms | int8-static ms | int8 / fp32 | int8 / reference "
        "| int8-static / fp32 | rel L2 int8 | rel L2 int8-static | MB fp32 / int8 / int8-static |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ms, sp, sr, d, mb = r["ms"], r["speedup_vs_fp32"], r["speedup_vs_reference"], r["rel_l2_vs_fp32"], r["mb"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {ms['reference']:.1f} | {ms['fp32']:.1f} | {ms['int8']:.1f} "
            f"| {ms['int8-static']:.1f} | {sp['int8']:.2f}x | {sr['int8']:.2f}x | {sp['int8-static']:.2f}x "
            f"| {100 * d['int8']:.2f}% | {100 * d['int8-static']:.2f}% "
            f"| {mb['fp32']:.1f} / {mb['int8']:.1f} / {mb['int8-static']:.1f} |"
        )
    if quality:
        lines += [
            "",
            "| demo, recommended settings | judge accuracy (+- s.e.) | FD | ms / image |",
            "|---|---:|---:|---:|",
        ]
        for q in quality:
            se = (q["accuracy"] * (1 - q["accuracy"]) / q["images"]) ** 0.5 if q.get("images") else None
            lines.append(
                f"| {q['precision']} | {100 * q['accuracy']:.1f}%"
                + (f" +- {100 * se:.1f}" if se else "")
                + f" | {q['fd']:.2f} | {q['ms_per_image']:.2f} |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default="demo,SiT-S/2@256,SiT-S/2@512,SiT-B/2@256,SiT-B/2@512",
        help="comma-separated: demo (the default demo), demo:NAME (another shipped demo, e.g. "
        "demo:fashion-mnist-p2) and NAME@SIZE (random weights)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--per-class", type=int, default=50, help="Demo images per class for the judge.")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quant.json")
    args = p.parse_args()
    rows, quality = [], []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        work = Path(tmp)
        for item in args.models.split(","):
            print(f"{item} ...", flush=True)
            if item == "demo" or item.startswith("demo:"):
                row, quality = demo(work, args.threads, args.repeats, args.per_class, item.partition(":")[2] or None)
            else:
                name, size = item.split("@")
                row = random_model(name, int(size), work, args.threads, args.repeats)
            rows.append(row)
            print(
                f"  fp32 {row['ms']['fp32']:.1f} ms, int8 {row['ms']['int8']:.1f} ms "
                f"({row['speedup_vs_fp32']['int8']:.2f}x), reference {row['ms']['reference']:.1f} ms",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"cpu_flags": cpu_flags(), "threads": args.threads, "rows": rows, "quality": quality}, indent=2)
        + "\n"
    )
    print(markdown(rows, quality, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
