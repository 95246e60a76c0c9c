"""Bundle builds: manifest contents, content-keyed rebuilds, refusals, interrupted builds."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import medexport
from medexport.bundle import MANIFEST, BuildSettings, Bundle, ModelSource, build_bundle, open_bundle
from medexport.bundle import build as build_module
from medexport.core.batch import BatchRange
from medexport.core.files import file_sha256
from medexport.errors import BackendUnavailableError, BundleError, CheckpointError, ConfigError
from tests.conftest import COUNTS, TINY, copy_bundle, tiny_model

SETTINGS = BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4))


def sources(checkpoints):
    return [ModelSource(n, checkpoint=p) for n, p in checkpoints.items()]


def test_manifest_contents(tiny_bundle, tiny_checkpoints):
    m = json.loads((tiny_bundle / MANIFEST).read_text())
    assert m["format"] == "medexport-bundle" and m["format_version"] == 1
    assert m["medexport_version"] == medexport.__version__
    assert m["model"]["depth"] == TINY.depth and m["model"]["input_size"] == TINY.input_size
    assert "mediators" not in m["model"]
    assert m["build"]["precision"] == "fp32" and m["build"]["batch"] == "1:2:4"
    assert m["requested"] == list(COUNTS) and sorted(map(int, m["counts"])) == list(COUNTS)
    for n in COUNTS:
        e = m["counts"][str(n)]
        assert e["config"]["mediators"] == n
        assert e["config"]["mediator_grid"] == list(medexport.model.mediator_grid(n))
        assert e["source"] == {
            "kind": "checkpoint",
            "path": str(tiny_checkpoints[n].resolve()),
            "weights": "ema",
            "sha256": file_sha256(tiny_checkpoints[n]),
        }
        onnx_entry = e["onnx"]
        assert onnx_entry["file"] == f"mediators-{n}.fp32.onnx" and onnx_entry["opset"] == 20
        assert onnx_entry["sha256"] == file_sha256(tiny_bundle / onnx_entry["file"])
        ort = e["engines"]["onnxruntime"]
        assert ort["precision"] == "fp32" and ort["batch"] == "1:2:4"
        assert ort["providers"] == ["CPUExecutionProvider"]
        assert {"torch", "onnx", "onnxruntime", "medexport"} <= set(ort["versions"])
    assert Bundle(tiny_bundle).missing == []


def test_unchanged_rebuild_exports_nothing(tiny_bundle, tiny_checkpoints, tmp_path, monkeypatch):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    before = {p.name: p.stat().st_mtime_ns for p in bundle.iterdir()}
    monkeypatch.setattr(build_module, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    report = build_bundle(sources(tiny_checkpoints), bundle, SETTINGS, show_progress=False)
    assert [r.exported for r in report.counts] == [False] * 3
    assert all(r.engines_kept == ["onnxruntime"] for r in report.counts)
    after = {p.name: p.stat().st_mtime_ns for p in bundle.iterdir()}
    assert {k: v for k, v in after.items() if k != MANIFEST} == {k: v for k, v in before.items() if k != MANIFEST}


def test_changed_checkpoint_rebuilds_only_its_count(tiny_bundle, tiny_checkpoints, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    ckpts = dict(tiny_checkpoints)
    ckpts[32] = medexport.save_checkpoint(tiny_model(32, seed=99), tmp_path / "new32.pt")
    report = build_bundle(sources(ckpts), bundle, SETTINGS, show_progress=False)
    assert {r.mediators: r.exported for r in report.counts} == {16: False, 32: True, 64: False}
    m = Bundle(bundle)
    assert m.entry(32).source.sha256 == file_sha256(ckpts[32])
    # a file whose name exists but whose content changed is rebuilt too
    (bundle / "mediators-16.fp32.onnx").write_bytes(b"garbage")
    report = build_bundle(sources(ckpts), bundle, SETTINGS, show_progress=False)
    assert {r.mediators: r.exported for r in report.counts} == {16: True, 32: False, 64: False}


def test_force_redoes_everything(tiny_bundle, tiny_checkpoints, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    report = build_bundle(
        [ModelSource(16, checkpoint=tiny_checkpoints[16])], bundle, SETTINGS, force=True, show_progress=False
    )
    assert report.counts[0].exported and report.counts[0].engines_built == ["onnxruntime"]
    assert Bundle(bundle).counts == [16]  # --force starts a fresh manifest for what was asked


def test_refusals(tiny_checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="more than once"):
        build_bundle([ModelSource(16, checkpoint=tiny_checkpoints[16])] * 2, tmp_path / "a", SETTINGS)
    with pytest.raises(CheckpointError, match="holds a 32-mediator model, not 16"):
        build_bundle([ModelSource(16, checkpoint=tiny_checkpoints[32])], tmp_path / "a", SETTINGS)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_bundle([ModelSource(16, checkpoint=tmp_path / "missing.pt")], tmp_path / "a", SETTINGS)
    other = medexport.save_checkpoint(
        medexport.create_model(
            TINY.with_mediators(32).__class__(**{**TINY.__dict__, "mediators": 32, "num_classes": 5}), seed=0
        ),
        tmp_path / "other.pt",
    )
    with pytest.raises(ConfigError, match="num_classes 10 vs 5"):
        build_bundle(
            [ModelSource(16, checkpoint=tiny_checkpoints[16]), ModelSource(32, checkpoint=other)],
            tmp_path / "a",
            SETTINGS,
        )
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        build_bundle(
            [ModelSource(16, checkpoint=tiny_checkpoints[16])], tmp_path / "a", BuildSettings(backend="tensorrt")
        )
    with pytest.raises(BackendUnavailableError, match="bfloat16"):
        build_bundle(
            [ModelSource(16, checkpoint=tiny_checkpoints[16])],
            tmp_path / "a",
            BuildSettings(backend="onnxruntime", precision="bf16"),
        )
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    with pytest.raises(BundleError, match="not an engine bundle"):
        build_bundle([ModelSource(16, checkpoint=tiny_checkpoints[16])], folder, SETTINGS)
    assert (folder / "thesis.tex").read_text() == "precious" and len(list(folder.iterdir())) == 1
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_bundle_of_another_model_is_not_overwritten(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest_before = (bundle / MANIFEST).read_text()
    ck = medexport.save_checkpoint(
        medexport.create_model(TINY.__class__(**{**TINY.__dict__, "depth": 3}), seed=0), tmp_path / "deep.pt"
    )
    with pytest.raises(BundleError, match="another model"):
        build_bundle([ModelSource(16, checkpoint=ck)], bundle, SETTINGS, show_progress=False)
    assert (bundle / MANIFEST).read_text() == manifest_before


def test_nonsense_manifest(tiny_bundle, tiny_checkpoints, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    m = json.loads((bundle / MANIFEST).read_text())
    m["counts"]["16"]["config"]["mediators"] = "many"
    (bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not a valid medexport manifest"):
        Bundle(bundle)
    (bundle / MANIFEST).write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle(bundle)
    with pytest.raises(BundleError, match="not valid JSON"):  # a build refuses it too, without --force
        build_bundle(sources(tiny_checkpoints), bundle, SETTINGS, show_progress=False)
    assert (bundle / "mediators-16.fp32.onnx").exists()
    with pytest.raises(BundleError, match="not an engine bundle"):
        Bundle(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        Bundle(tmp_path / "nowhere")


def test_engine_hash_mismatch_is_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    with open(bundle / "mediators-32.fp32.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="does not match the hash"):
        Bundle(bundle).check_engine(32, "onnxruntime")


_BUILD_SCRIPT = """
import sys
from medexport.core.batch import BatchRange
from medexport.bundle import BuildSettings, ModelSource, build_bundle
ckpts = dict(arg.split("=", 1) for arg in sys.argv[2:])
build_bundle([ModelSource(int(n), checkpoint=p) for n, p in ckpts.items()], sys.argv[1],
             BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)), show_progress=False)
"""


def test_interrupted_build_leaves_a_usable_or_clearly_incomplete_bundle(tiny_checkpoints, tmp_path):
    out = tmp_path / "b"
    args = [sys.executable, "-c", _BUILD_SCRIPT, str(out)] + [f"{n}={p}" for n, p in tiny_checkpoints.items()]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240

    def first_count_done():
        try:
            return "16" in json.loads((out / MANIFEST).read_text())["counts"]
        except (OSError, ValueError, KeyError):
            return False

    # kill it as soon as the first count is complete: it is then exporting the second (several seconds)
    while time.time() < deadline and not first_count_done():
        assert proc.poll() is None, "the build ended before it could be interrupted"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    bundle = open_bundle(out)  # usable: the completed count
    assert bundle.counts == [16] and bundle.missing == [32, 64]
    bundle.check_engine(16, "onnxruntime")
    report = build_bundle(sources(tiny_checkpoints), out, SETTINGS, show_progress=False)
    assert {r.mediators: r.exported for r in report.counts} == {16: False, 32: True, 64: True}
    assert Bundle(out).missing == [] and not list(out.glob("*.partial"))


def test_open_bundle_refuses_an_empty_one(tmp_path, tiny_bundle):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    m = json.loads((bundle / MANIFEST).read_text())
    m["counts"] = {}
    (bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="no complete mediator count"):
        open_bundle(bundle)


def test_tensorrt_plan_from_another_version_or_gpu_is_refused(monkeypatch):
    """The compatibility rule itself (TensorRT is absent here, so its probes are stood in for)."""
    from medexport.backend import registry
    from medexport.backend.trt import engine as trt_engine

    here = {"tensorrt": "10.15.1", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    monkeypatch.setattr(trt_engine, "tensorrt_status", lambda: (True, "TensorRT 10.15.1 on NVIDIA H200"))
    monkeypatch.setattr(trt_engine, "hardware", lambda: dict(here))
    trt = registry.get("tensorrt")
    assert trt.runnable({"hardware": dict(here)}, "fp16") == (True, "yes")
    ok, why = trt.runnable({"hardware": {**here, "compute_capability": "8.9"}}, "fp16")
    assert not ok and "compute_capability '8.9'" in why
    with pytest.raises(BundleError, match="built with tensorrt '10.9.0'.*rebuild it here"):
        trt_engine.check_plan_compatible({**here, "tensorrt": "10.9.0"})


def test_concurrent_build_into_one_bundle_is_refused(tiny_bundle, tiny_checkpoints, tmp_path):
    import fcntl

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest_before = (bundle / MANIFEST).read_text()
    with open(bundle / build_module.LOCK, "w") as held:  # another build holds the bundle
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BundleError, match="another medexport build is writing"):
            build_bundle(sources(tiny_checkpoints), bundle, SETTINGS, force=True, show_progress=False)
    assert (bundle / MANIFEST).read_text() == manifest_before


def test_an_up_to_date_bundle_builds_on_read_only_storage(tiny_bundle, tiny_checkpoints, tmp_path, monkeypatch):
    """Checking that nothing needs rebuilding takes no lock and writes nothing (it was refused for want of
    ``.build.lock``), so it works where the bundle cannot be written; a read-only mount is stood in for by failing
    every write the build could make, as that mount fails them."""
    import errno

    from click.testing import CliRunner

    from medexport.cli import cli

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in bundle.iterdir()}

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(bundle / build_module.LOCK))

    monkeypatch.setattr(build_module, "_exclusive", read_only)
    monkeypatch.setattr(build_module, "write_json_atomic", read_only)
    report = build_bundle(sources(tiny_checkpoints), bundle, SETTINGS, show_progress=False)
    assert [(r.exported, r.engines_built, r.engines_kept) for r in report.counts] == [(False, [], ["onnxruntime"])] * 3
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in bundle.iterdir()} == before  # nothing written
    args = [
        "build",
        *(f"--checkpoint={n}={p}" for n, p in tiny_checkpoints.items()),
        "--backend",
        "onnxruntime",
        "--batch",
        "1:2:4",
        "-o",
        str(bundle),
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "up to date" in r.output and "Traceback" not in r.output, r.output
    # with work to do (a new checkpoint), the read-only folder is named
    other = medexport.save_checkpoint(tiny_model(32, seed=99), tmp_path / "new32.pt")
    r = CliRunner().invoke(
        cli, [a if not a.startswith("--checkpoint=32=") else f"--checkpoint=32={other}" for a in args]
    )
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"{bundle / build_module.LOCK} is on a read-only file system: choose another --output" in r.output
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in bundle.iterdir()} == before


def test_output_that_is_a_file_is_refused(tiny_checkpoints, tmp_path):
    target = tmp_path / "bundle.txt"
    target.write_text("not a folder")
    with pytest.raises(BundleError, match="is a file"):
        build_bundle([ModelSource(16, checkpoint=tiny_checkpoints[16])], target, SETTINGS, show_progress=False)
    assert target.read_text() == "not a folder"


def test_changed_batch_range_rebuilds_engines_not_exports(tiny_bundle, tiny_checkpoints, tmp_path, monkeypatch):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    monkeypatch.setattr(build_module, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    report = build_bundle(
        sources(tiny_checkpoints),
        bundle,
        BuildSettings(backend="onnxruntime", batch=BatchRange(1, 4, 8)),
        show_progress=False,
    )
    assert all(r.engines_built == ["onnxruntime"] and not r.exported for r in report.counts)
    assert {str(Bundle(bundle).engine(n, "onnxruntime").batch) for n in COUNTS} == {"1:4:8"}


def test_links_in_a_bundle_are_refused(tiny_bundle, tiny_checkpoints, tmp_path):
    """A link named like a bundle file must never let a build write, or a run read, outside the bundle."""
    from medexport.bundle import engine_runner

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "linked"
    out.mkdir()
    (out / "manifest.json.partial").symlink_to(victim)
    with pytest.raises(BundleError, match="symbolic links"):
        build_bundle(
            [ModelSource(16, checkpoint=tiny_checkpoints[16])],
            out,
            BuildSettings(backend="onnxruntime"),
            show_progress=False,
        )
    assert victim.read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["manifest.json.partial"]
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    engine = bundle / Bundle(bundle).engine(16, "onnxruntime").file
    outside = tmp_path / "outside.onnx"
    engine.rename(outside)
    engine.symlink_to(outside)  # same bytes, same hash, but not the bundle's own file
    with pytest.raises(BundleError, match="symbolic link"):
        engine_runner(Bundle(bundle), 16, "onnxruntime")


def test_a_rebuild_never_overwrites_the_engine_the_manifest_vouches_for(tiny_bundle, tiny_checkpoints, tmp_path):
    """--force writes each count beside the good files and switches the manifest atomically, then removes the old
    files: at every moment the manifest names complete, matching files."""
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    before = Bundle(bundle).engine(16, "onnxruntime")
    good = (bundle / before.file).read_bytes()
    sources = [ModelSource(n, checkpoint=p) for n, p in tiny_checkpoints.items()]
    seen = []
    import medexport.bundle.build as build_module

    real_export = build_module.export_onnx

    def watching_export(model, path, **kw):
        # while the new graph is written, the manifest's file is still the old, intact one
        if path.name.startswith("mediators-16."):
            seen.append((path.name, (bundle / before.file).read_bytes() == good))
        return real_export(model, path, **kw)

    build_module.export_onnx = watching_export
    try:
        build_bundle(
            sources,
            bundle,
            BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)),
            force=True,
            show_progress=False,
        )
    finally:
        build_module.export_onnx = real_export
    assert seen[0] == ("mediators-16.fp32.next.onnx", True)
    after = Bundle(bundle)
    assert after.engine(16, "onnxruntime").file == "mediators-16.fp32.next.onnx"
    assert not (bundle / "mediators-16.fp32.onnx").exists()  # the replaced file is gone
    for n in COUNTS:
        after.check_engine(n, "onnxruntime")
    # the next --force goes back to the plain names
    build_bundle(
        sources[:1],
        bundle,
        BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)),
        force=True,
        show_progress=False,
    )
    assert Bundle(bundle).engine(16, "onnxruntime").file == "mediators-16.fp32.onnx"


def test_an_interrupted_force_rebuild_keeps_the_other_counts(tiny_bundle, tiny_checkpoints, tmp_path, monkeypatch):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    import medexport.bundle.build as build_module

    real_export, calls = build_module.export_onnx, []

    def interrupted(model, path, **kw):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second count is exported
        return real_export(model, path, **kw)

    monkeypatch.setattr(build_module, "export_onnx", interrupted)
    sources = [ModelSource(n, checkpoint=p) for n, p in tiny_checkpoints.items()]
    with pytest.raises(KeyboardInterrupt):
        build_bundle(
            sources,
            bundle,
            BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)),
            force=True,
            show_progress=False,
        )
    b = Bundle(bundle)
    assert b.counts == list(COUNTS)  # 16 redone, 32 and 64 still the intact engines of before
    for n in COUNTS:
        b.check_engine(n, "onnxruntime")


@pytest.mark.parametrize(
    "files",
    [{"manifest.json": '{"name": "my web app"}'}, {"manifest.json": "not json"}, {"mediators-notes.txt": "mine"}],
)
def test_force_never_takes_a_users_folder_for_a_bundle(tiny_checkpoints, tmp_path, files):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    with pytest.raises(BundleError, match="did not write|not an engine bundle"):
        build_bundle(
            [ModelSource(16, checkpoint=tiny_checkpoints[16])],
            out,
            BuildSettings(backend="onnxruntime"),
            force=True,
            show_progress=False,
        )
    assert {p.name: p.read_text() for p in out.iterdir()} == files


def test_a_partial_rebuild_in_another_precision_is_refused(tiny_bundle, tiny_checkpoints, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    before = (bundle / MANIFEST).read_text()
    with pytest.raises(BundleError, match="would leave 32, 64 in the old precision"):
        build_bundle(
            [ModelSource(16, checkpoint=tiny_checkpoints[16])],
            bundle,
            BuildSettings(backend="onnxruntime", precision="fp16", batch=BatchRange(1, 2, 4)),
            show_progress=False,
        )
    assert (bundle / MANIFEST).read_text() == before


def test_a_manifest_whose_counts_disagree_with_its_model_is_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    m = json.loads((bundle / MANIFEST).read_text())
    m["model"]["num_classes"] = 1000  # the engines were built for 10
    (bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="disagrees with 'model' on num_classes"):
        Bundle(bundle)
