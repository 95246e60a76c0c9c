"""``medexport sample``: outputs, the benchmark table and report, and bad input."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from medexport.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_sample_writes_latents_report_and_plot(tiny_bundle, tmp_path):
    out = tmp_path / "out"
    r = run(
        "sample",
        tiny_bundle,
        "--labels",
        "1,2",
        "--sampler",
        "ode",
        "--method",
        "euler",
        "--steps",
        "6",
        "--cfg-scale",
        "4",
        "--schedule",
        "16:0.3,32:0.7,64",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    assert np.load(out / "latents.npy").shape == (2, 4, 16, 16)
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["schedule"] == "16:0.3,32:0.7,64" and report["settings"]["cfg_scale"] == 4.0
    assert [e["mediators"] for e in report["trace"]] == [16, 16, 32, 32, 64]
    assert set(report["trace"][0]) >= {"step", "t", "mediators", "backend", "ms"}
    assert report["environment"]["onnxruntime"]
    assert (out / "step_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from medexport import Pipeline, SampleRequest  # the recorded request reproduces the run

    again = Pipeline.from_bundle(tiny_bundle).run(SampleRequest.from_dict(report["request"]))
    assert np.array_equal(again.latents.numpy(), np.load(out / "latents.npy"))


def test_sample_benchmark_against_reference(tiny_bundle, tmp_path):
    out = tmp_path / "bench"
    r = run(
        "sample",
        tiny_bundle,
        "--num",
        "2",
        "--sampler",
        "ode",
        "--method",
        "euler",
        "--steps",
        "5",
        "--cfg-scale",
        "2",
        "--schedule",
        "16:0.5,64",
        "--benchmark",
        "--warmup",
        "1",
        "--runs",
        "2",
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    for text in (
        "steps served",
        "onnxruntime",
        "torch",
        "images / s",
        "peak memory",
        "GFLOPs / image",
        "speed-up vs torch",
        "reference",
    ):
        assert text in r.output, text
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    assert s["backend"] == "onnxruntime" and s["reference_backend"] == "torch" and s["runs"] == 2
    assert s["steps_per_count"] == {"16": 2, "64": 2}
    assert s["speedup_vs_reference"] > 0 and s["images_per_second"] > 0 and s["max_rel_diff_vs_reference"] < 1e-4
    assert {e["backend"] for e in report["trace"]} == {"onnxruntime"}
    assert {e["backend"] for e in report["reference_trace"]} == {"torch"}


def test_sample_benchmark_against_another_precision(tiny_bundle, tiny_checkpoints, tmp_path):
    """An int8 bundle timed side by side with its fp32 bundle and the PyTorch reference, on the same inputs."""
    from medexport.bundle import BuildSettings, ModelSource, build_bundle
    from medexport.core.batch import BatchRange

    int8 = tmp_path / "int8"
    build_bundle(
        [ModelSource(n, checkpoint=p) for n, p in tiny_checkpoints.items()],
        int8,
        BuildSettings(backend="onnxruntime", precision="int8", batch=BatchRange(1, 2, 4)),
        show_progress=False,
    )
    out = tmp_path / "bench"
    r = run(
        "sample",
        int8,
        "--num",
        "2",
        "--sampler",
        "ode",
        "--method",
        "euler",
        "--steps",
        "5",
        "--cfg-scale",
        "2",
        "--schedule",
        "16:0.5,64",
        "--benchmark",
        "--warmup",
        "1",
        "--runs",
        "2",
        "--against",
        tiny_bundle,
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    assert "onnxruntime int8 (int8)" in r.output and "onnxruntime fp32 (tiny)" in r.output
    report = json.loads((out / "report.json").read_text())
    labels = [s["label"] for s in report["summaries"]]
    assert labels == ["onnxruntime int8 (int8)", "onnxruntime fp32 (tiny)", "torch"]
    assert all(s["speedup_vs_reference"] > 0 for s in report["summaries"][:2])
    assert 0 < report["summaries"][0]["max_rel_diff_vs_reference"] < 0.2  # int8: close, not equal
    assert report["summaries"][1]["max_rel_diff_vs_reference"] < 1e-4  # fp32: the reference's numbers

    r = run("sample", int8, "--num", "1", "--benchmark", "--against", tmp_path / "nothing", "--out", tmp_path / "o2")
    assert r.exit_code == 1 and "does not exist" in r.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--labels", "1,10"], "outside 0..9"),
        (["--labels", "a,b"], "is not a class label: give numbers 0..9"),
        (["--schedule", "16:0.3,32:x,64"], "at character"),
        (["--schedule", "16:0.7,32:0.3,64"], "fractions must increase"),
        (["--schedule", "16:0.5,48"], "48"),
        (["--schedule", "adaptive:16,32:ratios=2,1"], "ratio"),
        (["--steps", "1"], "steps"),
        (["--cfg-scale", "0.5"], "below 1"),
        (["--backend", "tensorrt"], "tensorrt"),
        (["--labels", "-1"], "outside 0..9"),  # not the null class, whatever the engine would do with it
        (["--num", "10000000"], "use `medexport generate`"),  # refused before memory is taken
        (["--per-class", "1000000000"], "use `medexport generate`"),
        (["--last-step", "tweedie"], "applies to the SDE sampler only"),
        (["--device", "garbage"], "unknown device 'garbage'"),
    ],
)
def test_sample_bad_input(tiny_bundle, tmp_path, args, message):
    r = run(
        "sample", tiny_bundle, "--sampler", "ode", "--method", "euler", "--steps", "4", *args, "--out", tmp_path / "o"
    )
    assert r.exit_code in (1, 2), r.output
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "o" / "report.json").exists()


def test_errors_and_paths_with_brackets_print_as_text(tmp_path):
    # rich would take "[/]" for markup (and crash) or "[red]" for a style (and drop it)
    missing = tmp_path / "a[/]b[red]" / "bundle"
    r = run("sample", missing)
    assert r.exit_code == 1 and f"{missing} does not exist" in r.output


def test_out_folder_of_someone_else_is_refused(tiny_bundle, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("do not touch")
    args = ["sample", tiny_bundle, "--labels", "1", "--sampler", "ode", "--method", "euler", "--steps", "3"]
    r = run(*args, "--out", out)
    assert r.exit_code == 1 and "did not write (thesis.tex)" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    # a folder with only names sample writes, but no report of a sample: not ours either
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.json").write_text('{"my": "report"}')
    r = run(*args, "--out", other)
    assert r.exit_code == 1 and "not the output of an earlier" in r.output
    assert (other / "report.json").read_text() == '{"my": "report"}'
    r = run(*args, "--out", tmp_path / "mine" / "thesis.tex")
    assert r.exit_code == 2 and "is a file" in r.output


def test_a_second_run_into_a_busy_folder_is_refused(tiny_bundle, tmp_path):
    import fcntl

    out = tmp_path / "out"
    args = [
        "sample",
        tiny_bundle,
        "--labels",
        "1",
        "--sampler",
        "ode",
        "--method",
        "euler",
        "--steps",
        "3",
        "--out",
        out,
    ]
    assert run(*args).exit_code == 0
    with open(out / ".medexport.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sample holds it
        r = run(*args)
    assert r.exit_code == 1 and "another `medexport sample` is writing" in r.output
    assert run(*args).exit_code == 0  # free again


def test_output_option_and_its_earlier_spelling(tiny_bundle, tmp_path):
    args = ["sample", tiny_bundle, "--labels", "1", "--sampler", "ode", "--method", "euler", "--steps", "3"]
    assert run(*args, "-o", tmp_path / "a").exit_code == 0 and (tmp_path / "a" / "report.json").exists()
    assert run(*args, "--out", tmp_path / "b").exit_code == 0 and (tmp_path / "b" / "report.json").exists()
    assert "--out " not in run("sample", "--help").output  # hidden, still accepted
    r = run("verify", tiny_bundle, "--seed", "3", "--backend", "onnxruntime")  # verify's earlier --seed
    assert r.exit_code == 0 and "PASS" in r.output


SAMPLE = ["--labels", "1", "--sampler", "ode", "--method", "euler", "--steps", "3"]


def test_sample_output_write_errors_are_clear(tiny_bundle, tmp_path, monkeypatch):
    import errno
    import os

    def full_disk(src, dst, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", full_disk)
    out = tmp_path / "out"
    r = run("sample", tiny_bundle, *SAMPLE, "-o", out)
    assert r.exit_code == 1, r.output
    assert f"no space left on the device holding {out}" in r.output and "nothing was half-written" in r.output
    assert "Traceback" not in r.output
    assert not out.exists() or not [p.name for p in out.iterdir() if p.name != ".medexport.lock"]
    monkeypatch.undo()
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    r = run("sample", tiny_bundle, *SAMPLE, "-o", tmp_path / "notes.txt" / "out")
    assert r.exit_code == 1 and "is a file, not a folder: choose another --output" in r.output, r.output
    assert "Traceback" not in r.output


def test_sample_refuses_a_junk_vae_folder_before_sampling(tiny_bundle, tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text("<html>rate limited</html>")
    r = run("sample", tiny_bundle, *SAMPLE, "--vae", vae, "-o", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert f"{vae / 'config.json'} is not valid JSON" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_the_shared_options_load_neither_torch_nor_the_benchmark():
    """The sampling options live in cli/options.py: declaring a command loads no benchmark (and calibrate,
    generate and the options themselves no torch); the choices read later are the runtime's own."""
    import subprocess
    import sys

    for module, light in (
        ("options", True),
        ("calibrate_cmd", True),
        ("generate_cmd", True),
        ("eval_cmd", True),
        ("tune_cmd", True),
        ("sample_cmd", True),
        ("bench_cmd", True),
        ("model_cmds", True),
    ):
        probe = f"import json, sys\nimport medexport.cli.{module}\nprint(json.dumps(sorted(sys.modules)))"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        mods = set(json.loads(out.strip().splitlines()[-1]))
        assert "medexport.runtime.benchmark" not in mods, module
        assert module == "sample_cmd" or "medexport.cli.sample_cmd" not in mods, module
        assert ("torch" not in mods) == light, module

    for command in ("sample", "eval", "tune", "generate"):
        text = run(command, "--help").output
        assert "[auto|torch|inductor|onnxruntime|tensorrt]" in text and "[3|all]" in text, command
    assert "[3|all]" in run("calibrate", "--help").output
    r = run("sample", "nowhere", "--backend", "cuda")
    assert (
        r.exit_code == 2 and "'cuda' is not one of 'auto', 'torch', 'inductor', 'onnxruntime', 'tensorrt'" in r.output
    )
    r = run("sample", "nowhere", "--cfg-channels", "2")
    assert r.exit_code == 2 and "'2' is not one of '3', 'all'" in r.output


def test_benchmark_runs_the_reference_where_the_engines_run(tiny_bundle, tmp_path, monkeypatch):
    """On a machine with a GPU, ONNX Runtime without its GPU provider runs on the CPU: the PyTorch reference is
    timed there too, and the engines' memory is counted from the CPU's figure, not the GPU's."""
    import torch

    from medexport.backend.onnxrt import session as ort_session

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine (this build of torch has none)
    monkeypatch.setattr(ort_session, "available_providers", lambda: ["CPUExecutionProvider"])
    out = tmp_path / "bench"
    r = run(
        "sample",
        tiny_bundle,
        "--num",
        "2",
        "--sampler",
        "ode",
        "--method",
        "euler",
        "--steps",
        "3",
        "--benchmark",
        "--warmup",
        "1",
        "--runs",
        "1",
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    main, ref = report["summaries"]
    assert report["environment"]["device"] == "cpu" and ref["backend"] == "torch"
    from medexport.runtime.memory import current_memory

    # counted from the GPU's figure (nothing allocated), it would be the whole process's resident memory
    assert main["peak_memory_bytes"] < current_memory(torch.device("cpu")) / 2


def test_benchmark_columns_print_bundle_names_as_text_not_markup(tiny_bundle, tmp_path):
    import shutil

    other = shutil.copytree(tiny_bundle, tmp_path / "[bold]tiny")  # the --against bundle's name is a column
    r = run(
        "sample",
        tiny_bundle,
        "--num",
        "1",
        "--sampler",
        "ode",
        "--method",
        "euler",
        "--steps",
        "3",
        "--schedule",
        "16",
        "--benchmark",
        "--warmup",
        "1",
        "--runs",
        "1",
        "--against",
        other,
        "--out",
        tmp_path / "bench",
    )
    assert r.exit_code == 0, r.output
    assert "onnxruntime fp32 ([bold]tiny)" in r.output
