"""``medexport build / verify / inspect`` through click's runner, with every bad input."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import medexport.errors
from medexport.bundle import MANIFEST
from medexport.cli import cli
from tests.conftest import copy_bundle


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_build_verify_inspect(tiny_checkpoints, tmp_path):
    out = tmp_path / "bundle"
    r = run(
        "build",
        "--checkpoint",
        f"16={tiny_checkpoints[16]}",
        "--checkpoint",
        f"32={tiny_checkpoints[32]}",
        "--backend",
        "onnxruntime",
        "--batch",
        "1:2:4",
        "-o",
        out,
    )
    assert r.exit_code == 0, r.output
    assert "exported" in r.output and "onnxruntime built" in r.output
    m = json.loads((out / MANIFEST).read_text())
    assert sorted(m["counts"]) == ["16", "32"]
    r = run(
        "build",
        "--checkpoint",
        f"16={tiny_checkpoints[16]}",
        "--checkpoint",
        f"32={tiny_checkpoints[32]}",
        "--backend",
        "onnxruntime",
        "--batch",
        "1:2:4",
        "-o",
        out,
    )
    assert r.exit_code == 0 and r.output.count("up to date") >= 4
    r = run("verify", out)
    assert r.exit_code == 0, r.output
    assert r.output.count("PASS") == 2
    r = run("inspect", out)
    assert r.exit_code == 0, r.output
    for text in ("onnxruntime", "fp32", "1:2:4", "4x4", "4x8", "yes", "tiny-m16.pt"):
        assert text in r.output, text


def test_verify_exits_nonzero_on_failure(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    with open(bundle / "mediators-64.fp32.onnx", "ab") as f:
        f.write(b"x")
    r = run("verify", bundle)
    assert r.exit_code == 1 and "FAIL" in r.output and "does not match the hash" in r.output


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--checkpoint", "16=/nonexistent/m16.pt"], 1, "does not exist"),
        (["--checkpoint", "16:{c16}"], 2, "is not COUNT=PATH"),
        (["--checkpoint", "16={c16}", "--checkpoint", "16={c16}"], 1, "given more than once"),
        (["--checkpoint", "16={c32}"], 1, "holds a 32-mediator model, not 16"),
        (["--checkpoint", "16={c16}", "--mediators", "16,32"], 1, "does not match the counts"),
        (["--mediators", "16,16"], 2, "more than once"),
        (["--mediators", "13", "--model", "SiT-S/8", "--image-size", "256"], 1, "does not fit the 4x4 token grid"),
        (["--backend", "tensorrt", "--checkpoint", "16={c16}"], 1, "TensorRT is not installed"),
        (["--batch", "4:2:1", "--checkpoint", "16={c16}"], 2, "min <= opt <= max"),
        (["--batch", "a:b", "--checkpoint", "16={c16}"], 2, "MIN:OPT:MAX"),
        (["--model", "SiT-Q/2"], 1, "unknown model"),
        (["--model", "SiT-S/8", "--seed", "99999999999999999999999"], 2, "not in the range 0<=x<=9223372036854775807"),
        (["--model", "SiT-S/8", "--init-seed", str(2**63)], 2, "not in the range 0<=x<=9223372036854775807"),
        (["--model", "SiT-S/8", "--init-seed", "-1"], 2, "not in the range 0<=x<=9223372036854775807"),
    ],
)
def test_build_bad_input(tiny_checkpoints, tmp_path, args, code, message):
    args = [a.format(c16=tiny_checkpoints[16], c32=tiny_checkpoints[32]) for a in args]
    r = run("build", *args, "-o", tmp_path / "out")
    assert r.exit_code == code, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_verify_and_inspect_bad_bundles(tmp_path, tiny_bundle):
    for cmd in ("verify", "inspect"):
        r = run(cmd, tmp_path / "nowhere")
        assert r.exit_code == 1 and "does not exist" in r.output
        r = run(cmd, tmp_path)
        assert r.exit_code == 1 and "not an engine bundle" in r.output
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    (bundle / MANIFEST).write_text(json.dumps({"format": "medexport-bundle", "format_version": 1, "counts": []}))
    r = run("inspect", bundle)
    assert r.exit_code == 1 and "not a valid medexport manifest" in r.output and "Traceback" not in r.output


def test_default_bundle_names_follow_the_checkpoints_content(tiny_checkpoints, tmp_path, monkeypatch):
    """Two training runs both write checkpoints/0000002.pt: their bundles must not replace each other."""
    import shutil

    from medexport.cli.bundle_cmds import default_output

    a, b = tmp_path / "run-a" / "0000002.pt", tmp_path / "run-b" / "0000002.pt"
    for path, n in ((a, 16), (b, 32)):
        path.parent.mkdir()
        shutil.copy(tiny_checkpoints[n], path)
    out_a, out_b = default_output(None, 256, [(16, a)]), default_output(None, 256, [(16, b)])
    assert out_a != out_b and out_a.name.startswith("0000002-")
    assert default_output(None, 256, [(16, a)]) == out_a  # stable for the same content


def test_inspect_says_an_engine_with_a_changed_file_does_not_run(tiny_bundle, tmp_path):
    from medexport.bundle import Bundle

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    r = run("inspect", bundle)
    assert r.exit_code == 0 and "no" not in r.output.split("runs here")[1].split("\n")[0]
    with open(bundle / Bundle(bundle).engine(32, "onnxruntime").file, "ab") as f:
        f.write(b"\0")
    r = run("inspect", bundle)
    assert r.exit_code == 0 and "does not match the hash" in r.output


def test_build_refuses_a_damaged_checkpoint(tiny_checkpoints, tmp_path):
    import shutil

    from tests.conftest import flip_byte_in_record

    ckpt = shutil.copy(tiny_checkpoints[16], tmp_path / "m16.pt")
    flip_byte_in_record(ckpt)
    r = run("build", "--checkpoint", f"16={ckpt}", "--backend", "onnxruntime", "-o", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert "is damaged" in r.output and "re-save" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def _looks_complete(folder):
    """Files a reader would take for finished outputs (a manifest, a graph, an engine)."""
    return sorted(p.name for p in folder.rglob("*") if p.name == MANIFEST or p.suffix in (".onnx", ".plan"))


@pytest.mark.parametrize(
    "code, message",
    [
        ("ENOSPC", "no space left on the device holding"),
        ("EROFS", "is on a read-only file system: choose another --output"),
        ("EACCES", "permission denied for"),
    ],
)
def test_build_output_write_errors_are_clear(tiny_checkpoints, tmp_path, monkeypatch, code, message):
    import errno
    import os

    def failing_replace(src, dst, **kwargs):  # the first rename of a finished file, as a full disk would fail it
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(dst))

    monkeypatch.setattr(os, "replace", failing_replace)
    out = tmp_path / "out"
    r = run("build", "--checkpoint", f"16={tiny_checkpoints[16]}", "--backend", "onnxruntime", "-o", out)
    assert r.exit_code == 1, r.output
    assert message in r.output and str(out) in r.output and "Traceback" not in r.output
    assert not out.exists() or _looks_complete(out) == []


@pytest.mark.parametrize(
    "where, message",
    [
        (lambda tmp: tmp / "notes.txt" / "bundle", "is a file, not a folder: choose another --output"),
        (lambda tmp: tmp / ("x" * 300), "is too long for the file system: choose a shorter --output"),
    ],
)
def test_build_output_paths_the_file_system_refuses(tiny_checkpoints, tmp_path, where, message):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    r = run("build", "--checkpoint", f"16={tiny_checkpoints[16]}", "--backend", "onnxruntime", "-o", where(tmp_path))
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_other_os_errors_keep_their_traceback(tiny_checkpoints, tmp_path, monkeypatch):
    import errno
    import os

    from medexport.errors import os_error_message

    def failing_replace(src, dst, **kwargs):
        raise OSError(errno.EIO, "Input/output error", str(dst))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):  # a bug or a broken disk: not the user's to fix
        run("build", "--checkpoint", f"16={tiny_checkpoints[16]}", "--backend", "onnxruntime", "-o", tmp_path / "o")
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device")).startswith(
        "no space left on the device holding the output"
    )
    assert os_error_message(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None


def test_paths_print_as_text_not_markup(tiny_checkpoints, tmp_path, monkeypatch):
    """A bundle folder whose path holds "[/]" (rich's closing tag) or "[bold]" prints as it is, in build's summary,
    verify's table and inspect's lines."""
    monkeypatch.chdir(tmp_path)  # a short relative path: the tables do not wrap it
    out = Path("odd[/]name") / "[bold]bundle"
    r = CliRunner().invoke(
        cli,
        [
            "build",
            "--checkpoint",
            f"16={tiny_checkpoints[16]}",
            "--backend",
            "onnxruntime",
            "--batch",
            "1:2:4",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output and "[/]" in r.output and "[bold]bundle" in r.output.replace("\n", "")
    for command in ("inspect", "verify"):
        r = CliRunner().invoke(cli, [command, str(out)])
        assert r.exit_code == 0, r.output
        assert "odd[/]name" in r.output.replace("\n", "") and "[bold]bundle" in r.output.replace("\n", ""), r.output
    assert "tiny-m16.pt" in CliRunner().invoke(cli, ["inspect", str(out)]).output


def test_build_demo_choice(tmp_path):
    r = run("build", "--demo", "mnist", "-o", tmp_path / "x")
    assert r.exit_code != 0 and "'mnist' is not" in r.output and "fashion-mnist-p2" in r.output
    r = run("build", "--demo", "fashion-mnist", "--model", "SiT-S/2", "-o", tmp_path / "x")
    assert r.exit_code != 0 and "--demo fashion-mnist builds a shipped demo model" in r.output
    assert not (tmp_path / "x").exists()
    from medexport.demo import demo_bundle_name, demo_folder, demo_names

    assert demo_names()[0] == "fashion-mnist" and demo_bundle_name() == "fashion-mnist-demo"
    with pytest.raises(medexport.errors.MedexportError, match="there is no demo 'nope'"):
        demo_folder("nope")


def test_the_demo_has_a_vanilla_twin_for_speed_only(tmp_path, monkeypatch):
    """`build --attention full` of the demo: its architecture, full attention, random weights, the demo's
    recommended sampling; the build says it is for speed only."""
    import json as _json

    from click.testing import CliRunner

    from medexport.cli import cli as _cli

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(_cli, ["build", "--attention", "full"])
    assert r.exit_code == 0, r.output
    assert "for speed comparisons only" in r.output
    manifest = _json.loads((tmp_path / "engines" / "fashion-mnist-demo-full" / "manifest.json").read_text())
    assert list(manifest["counts"]) == ["0"] and manifest["model"]["depth"] == 6
    assert manifest["sampling"]["cfg_scale"] == 2.0 and manifest["sampling"].get("schedule") is None
    assert (tmp_path / "engines" / "fashion-mnist-demo-full-random-0.safetensors").is_file()
