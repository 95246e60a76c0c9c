"""The benchmark scripts' own arithmetic: the trade-off benchmark's merge of per-seed runs (its statistics, its
refusals) and its table and plot; the GPU table's script and the GPU checks, run on the CPU so that they never
rot (the whole of ``gpu_checks.sh --cpu-smoke`` runs in CI, after the tests)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_of(seed: int, accs: dict[str, float], fds: dict[str, float], **env) -> dict:
    rows = []
    for schedule in ("4", "48", "4:0.5,48"):
        rows.append(
            {
                "kind": "static" if "," not in schedule else "fixed",
                "schedule": schedule,
                "images": 100,
                "gflops_per_image": {"4": 1.0, "48": 1.2, "4:0.5,48": 1.1}[schedule],
                "steps_per_count": {"4": 19} if schedule == "4" else {"48": 19},
                "seeds": [seed],
                "accuracy_per_seed": [accs[schedule]],
                "fd_per_seed": [fds[schedule]],
                "ms_per_image_per_seed": [10.0 + seed],
            }
        )
    environment = {
        "bundle": "fashion-mnist-p2-demo",
        "sampling": "ode euler, 20 steps, cfg 3 (all channels), schedule 4:0.5,48",
        "tokens": 196,
        "counts": [4, 48],
        "images_per_seed": 100,
        "backend": "onnxruntime",
        "threads": 1,
        "seeds": [seed],
        "seconds": 5.0,
        "full_attention_gflops_per_image": 1.5,
        **env,
    }
    return {"environment": environment, "rows": rows, "real_floor": {"images": 100, "accuracy": 0.9, "fd": 4.0}}


def test_tradeoff_runs_of_different_seeds_merge_into_one_table(tmp_path):
    bench = load("bench_demo_tradeoff")
    a = run_of(0, {"4": 0.80, "48": 0.90, "4:0.5,48": 0.88}, {"4": 110.0, "48": 100.0, "4:0.5,48": 101.0})
    b = run_of(1, {"4": 0.84, "48": 0.86, "4:0.5,48": 0.90}, {"4": 114.0, "48": 102.0, "4:0.5,48": 103.0})
    out = bench.merge([(Path("a.json"), a), (Path("b.json"), b)])
    assert out["environment"]["seeds"] == [0, 1] and out["environment"]["images_per_schedule"] == 200
    small, large = out["rows"][0], out["rows"][1]
    assert small["accuracy"] == pytest.approx(0.82) and small["accuracy_per_seed"] == [0.80, 0.84]
    assert small["accuracy_se"] == pytest.approx(math.sqrt(0.82 * 0.18 / 200))
    assert small["fd"] == pytest.approx(112.0) and small["fd_sd"] == pytest.approx(math.sqrt(8.0))
    assert large["ms_per_image"] == pytest.approx(10.5)
    lines = bench.summary(out)
    assert any("smallest static (4) against the largest: accuracy -6.0 points" in line for line in lines)
    assert any("4:0.5,48 (91.7%)" in line for line in lines)  # within 1 point of 48, fewer GFLOPs
    table = bench.markdown(out)
    assert any("paired by seed" in line and "+10.00, +12.00; mean +11.00 +- 1.00" in line for line in lines)
    assert "| fixed | 4:0.5,48 (the default) | 200 | 89.0% +- 2.2 | 102.00 +- 1.41 |" in table
    assert "| full attention | (cost only) |" in table and "| real images |" in table
    js, png = bench.write(out, tmp_path, "p2")
    assert json.loads(js.read_text())["rows"][0]["accuracy"] == pytest.approx(0.82)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.partial"))


def test_more_seeds_of_some_schedules_merge_over_those_seeds():
    bench = load("bench_demo_tradeoff")
    accs, fds = {"4": 0.8, "48": 0.9, "4:0.5,48": 0.9}, {"4": 12.0, "48": 10.0, "4:0.5,48": 11.0}
    statics = run_of(2, accs, {**fds, "4": 13.0})
    statics["rows"] = [r for r in statics["rows"] if r["kind"] == "static"]  # --kinds static
    out = bench.merge([(Path("a"), run_of(0, accs, fds)), (Path("b"), run_of(1, accs, fds)), (Path("c"), statics)])
    rows = {r["schedule"]: r for r in out["rows"]}
    assert rows["4"]["seeds"] == [0, 1, 2] and rows["4:0.5,48"]["seeds"] == [0, 1]
    assert rows["4"]["fd"] == pytest.approx(37 / 3) and rows["48"]["accuracy_se"] == pytest.approx(
        math.sqrt(0.9 * 0.1 / 300)
    )
    assert "| static | 4 | 300 |" in bench.markdown(
        out
    ) and "| fixed | 4:0.5,48 (the default) | 200 |" in bench.markdown(out)
    assert bench.paired(rows["4"], rows["48"])[:2] == ([2.0, 2.0, 3.0], pytest.approx(7 / 3))
    assert [kind for kind, _ in bench.plans([4, 16, 48], False, ("static",))] == ["static"] * 3


def test_tradeoff_merge_refuses_runs_that_do_not_belong_together(tmp_path):
    bench = load("bench_demo_tradeoff")
    accs, fds = {"4": 0.8, "48": 0.9, "4:0.5,48": 0.9}, {"4": 1.0, "48": 1.0, "4:0.5,48": 1.0}
    with pytest.raises(SystemExit, match="repeats seed"):
        bench.merge([(Path("a"), run_of(0, accs, fds)), (Path("b"), run_of(0, accs, fds))])
    with pytest.raises(SystemExit, match="is another run than a: sampling"):
        bench.merge([(Path("a"), run_of(0, accs, fds)), (Path("b"), run_of(1, accs, fds, sampling="ode heun"))])
    # from the command line: an unreadable file is an error naming it, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_demo_tradeoff.py"),
            "--merge",
            str(bad),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and f"cannot read {bad}" in r.stderr and not (tmp_path / "out").exists()


def test_gpu_pipeline_script_measures_schedule_and_twin_on_the_cpu(tmp_path, capsys):
    """bench_gpu_pipeline.py, the GPU table's script, end to end on the CPU with a one-block model: the vanilla twin
    runs as a pipeline of its own (no schedule), every table prints, the summary row and the report agree."""
    import torch

    bench = load("bench_gpu_pipeline")
    threads = torch.get_num_threads()
    try:
        rc = bench.main(
            [
                "--model",
                "SiT-S/2",
                "--depth",
                "1",
                "--device",
                "cpu",
                "--precision",
                "fp32",
                "--sizes",
                "128",
                "--batch",
                "1",
                "--steps",
                "2",
                "--runs",
                "1",
                "--rounds",
                "1",
                "--threads",
                "1",
                "--schedule",
                "16:0.5,64",
                "--out",
                str(tmp_path),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((tmp_path / "torch-128.json").read_text())
    e2e = report["end_to_end"]
    assert report["tokens"] == 64 and report["forward_batch"] == 2 and report["evaluations"] == 2
    assert e2e["schedule"] == "16:0.5,64" and e2e["steps_per_count"] == {"16": 1, "64": 1}
    assert [r["mediators"] for r in report["forward"]] == ["16", "64", "full"]
    assert report["ceilings"]["matmul_tflops"] > 0 and len(report["attention"]) == 3
    row = (
        f"| 128 | torch | 1 | 2 | {e2e['medexport']['images_per_second']:.2f} | "
        f"{e2e['vanilla']['images_per_second']:.2f} | {e2e['measured_ratio']:.2f}x | "
        f"{e2e['predicted_ratio']:.2f}x |"
    )
    assert row in (tmp_path / "summary-torch.md").read_text() and f"ROW {row}" in printed
    for title in (
        "ceilings measured in this run on cpu",
        "per forward: torch fp32 on cpu",
        "attention part",
        "end to end: 1 images, ode euler 3 steps, cfg 4",
    ):
        assert title in printed, title


def test_gpu_pipeline_script_refuses_bad_input(capsys):
    bench = load("bench_gpu_pipeline")
    assert bench.parse_size_settings("1024:batch=4,steps=20;512:steps=30") == {
        1024: {"batch": 4, "steps": 20},
        512: {"steps": 30},
    }
    for bad in ("1024:batch=0", "1024:frames=3", "big:batch=4", "1024:batch"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--size-settings", bad])
        assert "expected SIZE:batch=N,steps=N" in capsys.readouterr().err, bad
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "256,big"])
    assert "expected image sizes" in capsys.readouterr().err


def test_gpu_pipeline_script_refuses_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert load("bench_gpu_pipeline").main(["--device", "cuda"]) == 2
    assert "no CUDA GPU is visible here" in capsys.readouterr().err


def test_gpu_checks_script_parses_and_wants_an_outdir_for_the_smoke_run():
    script = ROOT / "benchmarks" / "gpu_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script), "--cpu-smoke"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: bash benchmarks/gpu_checks.sh --cpu-smoke OUTDIR" in r.stderr
