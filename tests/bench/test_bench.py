"""The vanilla twin (``build --attention full``) and ``medexport bench``, with every bad input."""

import json

import pytest
from click.testing import CliRunner

import medexport
from medexport.bench import run_bench
from medexport.cli import cli
from medexport.core.config import FULL
from medexport.core.request import SampleRequest
from medexport.core.schedule import FixedSchedule
from medexport.errors import BundleError, ConfigError, ScheduleError
from medexport.model import forward_flops
from tests.bench.conftest import QUICK_BENCH
from tests.conftest import TINY, copy_bundle, tiny_model


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_twin_builds_verifies_and_inspects(twin_bundle):
    m = json.loads((twin_bundle / "manifest.json").read_text())
    assert list(m["counts"]) == ["0"] and m["model"]["attention"] == "full" and m["requested"] == [0]
    assert (twin_bundle / "full-attention.fp32.onnx").is_file()
    r = run("verify", twin_bundle)
    assert r.exit_code == 0 and "PASS" in r.output, r.output
    r = run("inspect", twin_bundle)
    assert r.exit_code == 0 and "full attention: from" in r.output, r.output
    # a vanilla bundle samples its one model (static schedule of count 0)
    pipe = medexport.Pipeline.from_bundle(twin_bundle, threads=1)
    result = pipe.sample([1, 2], seed=0, sampler="ode", method="euler", steps=3)
    assert result.steps_per_count() == {FULL: 2} and result.latents.isfinite().all()


def test_bad_twin_builds(tiny_checkpoints, vanilla_checkpoint, tmp_path):
    cases = [
        (
            ("--attention", "full", "--model", "SiT-S/2", "--mediators", "16"),
            "which has no mediators: drop --mediators",
        ),
        (("--checkpoint", f"16={vanilla_checkpoint}"), "plain (full-attention) DiT/SiT checkpoint, not a 16-mediator"),
        (("--attention", "full", "--checkpoint", tiny_checkpoints[16]), "16-mediator model, not a full-attention"),
        (("--attention", "full", "--checkpoint", f"0={vanilla_checkpoint}"), "has no mediator count; give the path"),
        (("--checkpoint", f"0={vanilla_checkpoint}"), "0 is not a mediator count"),
        (("--model", "SiT-S/2", "--mediators", "0,16"), "0 is not a mediator count"),
        (
            ("--checkpoint", f"16={tiny_checkpoints[16]}", "--image-size", "256"),
            "trained at 128x128 (8x8 tokens, 16x16 latents), not 256x256",
        ),
    ]
    for args, message in cases:
        out = tmp_path / "never"
        r = run("build", *args, "-o", out)
        assert r.exit_code != 0, args
        assert message in r.output, (args, r.output)
        assert not out.exists(), args


def test_schedules_never_mix_the_full_model():
    assert FixedSchedule.static(FULL).counts == (FULL,)
    with pytest.raises(ScheduleError, match="cannot share a schedule"):
        FixedSchedule((FULL, 16), (0.5,))


def test_bench_against_twin(tiny_bundle, twin_bundle, tmp_path):
    request = SampleRequest([1, 2], seed=0, sampler="ode", method="euler", steps=4, cfg_scale=2.0, schedule="16:0.5,64")
    report = run_bench(tiny_bundle, twin_bundle, request, threads=1, rounds=2, runs=1, warmup=0)
    rows = {r["mediators"]: r for r in report["forward"]}
    assert sorted(rows) == ["16", "32", "64", "full"]
    full = forward_flops(TINY.with_mediators(FULL))
    for n in (16, 32, 64):
        assert rows[str(n)]["predicted_ratio"] == round(full / forward_flops(TINY.with_mediators(n)), 4)
        assert rows[str(n)]["measured_ratio"] == pytest.approx(rows["full"]["ms"] / rows[str(n)]["ms"], rel=2e-3)
        assert len(rows[str(n)]["ms_all"]) == 2
    e2e = report["end_to_end"]
    assert e2e["steps_per_count"] == {"16": 2, "64": 1} and e2e["images"] == 2
    assert report["forward_batch"] == 4  # 2 images, doubled by guidance
    for side in ("medexport", "vanilla"):
        assert e2e[side]["images_per_second"] > 0 and len(e2e[side]["seconds_all"]) == 1
        assert e2e[side]["peak_memory_bytes"] is not None
    # (the seconds are rounded to 0.1 ms in the report; the ratio is computed before rounding)
    assert e2e["measured_ratio"] == pytest.approx(
        e2e["vanilla"]["batch_seconds"] / e2e["medexport"]["batch_seconds"], rel=0.05
    )
    # the cost of the schedule: 2 steps of 16, 1 of 64 against 3 of the full model (per image, guidance doubling)
    predicted = 3 * full / (2 * forward_flops(TINY) + forward_flops(TINY.with_mediators(64)))
    assert e2e["predicted_ratio"] == pytest.approx(predicted, rel=1e-3)


def test_bench_cli_writes_report_and_plot(tiny_bundle, twin_bundle, tmp_path):
    out = tmp_path / "bench"
    r = run(
        "bench",
        tiny_bundle,
        "--against",
        twin_bundle,
        *QUICK_BENCH,
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output
    assert "full (vanilla)" in r.output and "speed-up over the vanilla engine" in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "medexport-bench" and report["environment"]["cpu_flags"] is not None
    assert (out / "bench.png").stat().st_size > 1000
    # again into the same folder: its own earlier output is replaced
    r = run(
        "bench",
        tiny_bundle,
        "--against",
        twin_bundle,
        *QUICK_BENCH,
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output


def test_bench_bad_pairs(tiny_bundle, twin_bundle, tmp_path):
    cases = [
        (("bench", tiny_bundle), "has no vanilla twin to be measured against"),
        (("bench", twin_bundle), "is itself a vanilla (full-attention) bundle"),
        (("bench", tiny_bundle, "--against", tiny_bundle), "not a full-attention model"),
        (("bench", twin_bundle, "--against", twin_bundle), "is itself a vanilla"),
        # refused before anything is opened or timed, not an allocation failure after the end-to-end runs
        (
            ("bench", tiny_bundle, "--against", twin_bundle, "--forward-batch", "1000000000"),
            "--forward-batch 1000000000 needs at least",
        ),
    ]
    for args, message in cases:
        r = run(*args, "-o", tmp_path / "never")
        assert r.exit_code != 0 and message in r.output, (args, r.output)
        assert not (tmp_path / "never").exists()
    # another architecture, and another precision
    other = copy_bundle(twin_bundle, tmp_path / "other")
    m = json.loads((other / "manifest.json").read_text())
    m["build"]["precision"] = "int8"
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="holds fp32 engines and .* int8 ones"):
        run_bench(tiny_bundle, other, SampleRequest([1], seed=0))
    small = tmp_path / "small"
    r = run("build", "--attention", "full", "--model", "SiT-S/2", "--image-size", "64", "--onnx-only", "-o", small)
    assert r.exit_code == 0, r.output
    with pytest.raises(BundleError, match="is not the vanilla twin of .* the models differ in depth 2 vs 12"):
        run_bench(tiny_bundle, small, SampleRequest([1], seed=0))
    with pytest.raises(ConfigError, match=r"GiB is available: use --forward-batch \d+ or less \(nothing was timed\)"):
        run_bench(tiny_bundle, twin_bundle, SampleRequest([1], seed=0), batch=10**12)


def test_a_twin_never_goes_into_a_mediator_bundle(
    tiny_bundle, twin_bundle, vanilla_checkpoint, tiny_checkpoints, tmp_path
):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    before = (bundle / "manifest.json").read_text()
    r = run(
        "build",
        "--attention",
        "full",
        "--checkpoint",
        vanilla_checkpoint,
        "--backend",
        "onnxruntime",
        "--batch",
        "1:2:4",
        "-o",
        bundle,
    )
    assert r.exit_code != 0 and "holds a mediator bundle, and this build is of a vanilla" in r.output, r.output
    assert (bundle / "manifest.json").read_text() == before
    twin = copy_bundle(twin_bundle, tmp_path / "t")
    r = run(
        "build",
        "--checkpoint",
        f"16={tiny_checkpoints[16]}",
        "--backend",
        "onnxruntime",
        "--batch",
        "1:2:4",
        "-o",
        twin,
    )
    assert r.exit_code != 0 and "holds a vanilla (full-attention) bundle" in r.output, r.output
    r = run("sample", twin, "--schedule", "16", "--steps", "3", "-o", tmp_path / "s")
    assert r.exit_code != 0 and "this is a vanilla (full-attention) bundle" in r.output, r.output


def test_a_pipeline_never_mixes_the_full_model_with_mediator_counts():
    from medexport.backend.pytorch.runner import TorchRunner
    from medexport.errors import ConfigError

    runners = {16: TorchRunner(tiny_model(16)), FULL: TorchRunner(tiny_model(FULL, attention="full"))}
    with pytest.raises(ConfigError, match="cannot share a pipeline"):
        medexport.Pipeline(runners, TINY)


def test_sample_benchmark_refuses_a_mediator_bundle_against_its_twin(tiny_bundle, twin_bundle, tmp_path):
    """`sample --benchmark --against` compares engines of the same counts; a mediator bundle and its vanilla twin
    are bench's pair, and are refused (either way round) before anything is timed, naming bench."""
    for bundle, other in ((tiny_bundle, twin_bundle), (twin_bundle, tiny_bundle)):
        out = tmp_path / f"out-{bundle.name}"
        r = run(
            "sample", bundle, "--num", "1", "--steps", "2", "--benchmark", "--runs", "1", "--against", other, "-o", out
        )
        assert r.exit_code != 0, r.output
        assert f"{twin_bundle} is a vanilla (full-attention) bundle and {tiny_bundle} a mediator one" in r.output
        assert f"medexport bench {tiny_bundle} --against {twin_bundle}" in r.output
        assert "Traceback" not in r.output and "KeyError" not in r.output
        assert not out.exists() or not any(out.iterdir())
