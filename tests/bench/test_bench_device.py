"""``medexport bench``'s device table on the CPU with the tiny model: the ceilings measured in the run, model FLOP
utilisation, the attention part against the copy bandwidth, start-up, the profile, and the refusals of a device
or a backend that cannot run where asked (before anything is timed or written)."""

import json

import pytest
import torch
from click.testing import CliRunner

from medexport.bench import BenchSettings, bench_tables, measure_ceilings, median_ms, run_bench
from medexport.bench.attention import attention_bytes
from medexport.cli import cli
from medexport.core.config import FULL
from medexport.core.request import SampleRequest
from medexport.errors import ConfigError
from medexport.model import forward_flops
from tests.bench.conftest import QUICK_BENCH
from tests.conftest import TINY


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def report(tiny_bundle, twin_bundle):
    request = SampleRequest([1, 2], seed=0, sampler="ode", method="euler", steps=4, cfg_scale=2.0, schedule="16:0.5,64")
    return run_bench(
        tiny_bundle,
        twin_bundle,
        request,
        backend="torch",
        device="cpu",
        threads=1,
        rounds=2,
        runs=1,
        warmup=0,
        profile=True,
    )


def test_ceilings_are_measured_in_the_run(report):
    c = report["ceilings"]
    assert c["device"] == "cpu" and c["matmul_dtype"] == "float32" and c["matmul_side"] == 512
    assert c["matmul_tflops"] > 0 and c["copy_gbps"] > 0 and c["copy_bytes"] == 64 << 20


def test_forward_rows_carry_flop_rates_and_utilisation(report):
    assert report["backend"] == "torch" and report["device"] == "cpu" and report["forward_batch"] == 4
    peak = report["ceilings"]["matmul_tflops"]
    rows = {r["mediators"]: r for r in report["forward"]}
    assert sorted(rows) == ["16", "32", "64", "full"]
    for name, r in rows.items():
        n = FULL if name == "full" else int(name)
        macs = forward_flops(TINY.with_mediators(n))
        # model FLOPs (2 per multiply-add) of the forward batch over its median time, and their share of the peak
        assert r["tflops"] == pytest.approx(2 * macs * 4 / (r["ms"] * 1e-3) / 1e12, rel=2e-3)
        assert r["mfu"] == pytest.approx(r["tflops"] / peak, rel=2e-3, abs=1e-4)
        assert r["measured_ratio"] == pytest.approx(rows["full"]["ms"] / r["ms"], rel=2e-3)


def test_attention_rows_count_the_bytes_and_the_bandwidth(report):
    rows = {r["mediators"]: r for r in report["attention"]}
    assert sorted(rows) == ["16", "32", "64", "full"]
    N, D, H = TINY.num_tokens, TINY.hidden_size, TINY.num_heads
    assert rows["full"]["bytes"] == 4 * (4 * 4 * N * D)  # fp32: q, k, v read and o written, batch 4
    assert rows["64"]["bytes"] == 4 * (4 * 4 * N * D + 2 * H * 64 * N + 64 * N + 10 * D)
    assert attention_bytes(TINY, 4, 2) * 2 == rows["16"]["bytes"]  # elements x size
    copy = report["ceilings"]["copy_gbps"]
    for r in rows.values():
        assert r["tokens"] == N and r["batch"] == 4 and r["module_ms"] > 0 and r["linears_ms"] > 0
        assert r["between_ms"] == pytest.approx(r["module_ms"] - r["linears_ms"], rel=1e-3, abs=1e-5)
        if r["between_ms"] > 0:  # an estimate from two timings: noise can make it <= 0, then no bandwidth
            assert r["gbps"] == pytest.approx(r["bytes"] / (r["between_ms"] * 1e-3) / 1e9, rel=2e-3)
            assert r["copy_fraction"] == pytest.approx(r["gbps"] / copy, rel=2e-3, abs=1e-4)
        else:
            assert r["gbps"] is None and r["copy_fraction"] is None


def test_end_to_end_utilisation_and_startup(report):
    e = report["end_to_end"]
    peak = report["ceilings"]["matmul_tflops"]
    for side in ("medexport", "vanilla"):
        r = e[side]
        assert r["tflops"] == pytest.approx(2 * r["gflops_per_image"] * 1e9 * r["images_per_second"] / 1e12, rel=5e-3)
        assert r["mfu"] == pytest.approx(r["tflops"] / peak, rel=5e-3, abs=1e-4)
        start = report["startup"][side]
        assert start["open_seconds"] > 0 and start["warm_seconds"] >= 0
    assert "compile_cache" not in report["startup"]  # nothing compiled


def test_profile_puts_the_two_models_side_by_side(report):
    p = report["profile"]
    assert p["unit"] == "CPU ops, self time" and p["mediators"] == "64" and p["batch"] == 4
    rows = {r["name"]: r for r in p["rows"]}
    assert 0 < len(rows) <= 15
    # the mediator model's attention op is its own, SDPA the vanilla model's; the linears both run
    mine = [r for name, r in rows.items() if name.startswith("medexport::")]
    assert mine and all(r["medexport"]["calls"] == TINY.depth and r["vanilla"]["ms"] is None for r in mine)
    sdpa = [r for name, r in rows.items() if "scaled_dot_product" in name]
    assert sdpa and all(r["medexport"]["ms"] is None and r["vanilla"]["calls"] == TINY.depth for r in sdpa)
    assert rows["aten::addmm"]["medexport"]["ms"] > 0 and rows["aten::addmm"]["vanilla"]["ms"] > 0
    for side in ("medexport", "vanilla"):
        shown = sum(r[side]["ms"] or 0 for r in p["rows"])
        assert 0 < shown <= p["total_ms"][side] + 1e-3


def test_tables_say_it_in_words(report):
    titles = [t.title for t in bench_tables(report)]
    assert [t.split(" ")[0] for t in titles] == ["ceilings", "per", "attention", "end", "profile"]
    text = "\n".join(t.markdown() for t in bench_tables(report))
    assert "| full (vanilla) |" in text and "speed-up over the vanilla engine: measured" in text
    assert "| medexport::" in text and "TFLOP/s" in text and "of copy" in text


def test_bench_cli_prints_the_device_tables(tiny_bundle, twin_bundle, tmp_path):
    out = tmp_path / "bench"
    r = run(
        "bench",
        tiny_bundle,
        "--against",
        twin_bundle,
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--profile",
        *QUICK_BENCH,
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output
    for words in (
        "ceilings measured in this run on cpu",
        "attention part of one block",
        "MFU",
        "profile of one forward",
        "engines warmed",
    ):
        assert words in r.output, words
    saved = json.loads((out / "report.json").read_text())
    assert saved["profile"]["rows"] and saved["ceilings"]["copy_gbps"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused_before_anything_runs(tiny_bundle, twin_bundle, tmp_path):
    r = run(
        "bench",
        tiny_bundle,
        "--against",
        twin_bundle,
        "--device",
        "cuda",
        "--backend",
        "torch",
        "-o",
        tmp_path / "never",
    )
    assert r.exit_code != 0 and "no CUDA GPU is visible here: use cpu" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "never").exists()


def test_engines_that_would_run_elsewhere_are_refused(tiny_bundle, twin_bundle, tmp_path, monkeypatch):
    """A GPU asked for, and ONNX Runtime without its CUDA provider would run the engines on the CPU: refused with
    the backends that do run there, before the output folder exists and before anything is timed."""
    import medexport.bench.compare as compare

    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("onnxruntime here has its CUDA provider")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(compare, "open_and_warm", lambda *a, **k: pytest.fail("timed before refusing"))
    for backend in ("onnxruntime", "auto"):
        r = run(
            "bench",
            tiny_bundle,
            "--against",
            twin_bundle,
            "--device",
            "cuda",
            "--backend",
            backend,
            "-o",
            tmp_path / "never",
        )
        assert r.exit_code != 0, r.output
        assert "--device cuda was asked for, but the onnxruntime engines run on cpu here" in r.output, r.output
        assert "--backend inductor or --backend torch" in r.output and "Traceback" not in r.output
        assert not (tmp_path / "never").exists()


def test_profile_of_engines_outside_pytorch_is_refused(tiny_bundle, twin_bundle, tmp_path):
    r = run(
        "bench",
        tiny_bundle,
        "--against",
        twin_bundle,
        "--backend",
        "onnxruntime",
        "--profile",
        "-o",
        tmp_path / "never",
    )
    assert r.exit_code != 0 and "the onnxruntime engines run outside PyTorch" in r.output, r.output
    assert not (tmp_path / "never").exists()


def test_settings_are_checked():
    for bad in (
        {"rounds": 0},
        {"runs": 0},
        {"warmup": -1},
        {"batch": 0},
        {"rounds": 1.5},
        {"profile_rows": 0},
        {"batch": True},
    ):
        with pytest.raises(ConfigError, match="must be"):
            BenchSettings(**bad)


def test_median_ms_and_ceilings_measure_what_they_time():
    import time

    ms = median_ms(lambda: time.sleep(0.004), torch.device("cpu"), reps=5, warmup=1)
    assert 4 <= ms < 40
    c = measure_ceilings(torch.device("cpu"), torch.bfloat16, matmul_side=64, copy_bytes=1 << 20, reps=2)
    assert c.matmul_dtype == "bfloat16" and c.matmul_side == 64 and c.copy_bytes == 1 << 20
    assert c.to_dict()["matmul_tflops"] > 0
