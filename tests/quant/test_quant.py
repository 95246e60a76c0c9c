"""Quantised precisions and calibration: what each count's engine receives is recorded under its schedule;
int8 / int8-static engines are built from it, run, verify within their tolerance; fp8 is exported as Q/DQ for
TensorRT; every bad input is refused with the command that fixes it, and nothing half-written is left."""

import json
import shutil

import numpy as np
import onnx
import pytest

from medexport.bundle import BuildSettings, Bundle, ModelSource, build_bundle, verify_bundle
from medexport.calibrate import record
from medexport.core.batch import BatchRange
from medexport.errors import BackendUnavailableError, CalibrationError, ConfigError, ScheduleError
from medexport.quant.calibration import MANIFEST, CalibrationSet
from tests.conftest import COUNTS

SAMPLING = {"sampler": "ode", "method": "euler", "steps": 9, "cfg_scale": 2.0}
BATCH = BatchRange(1, 2, 16)


def sources(ckpts, counts=COUNTS):
    return [ModelSource(n, checkpoint=ckpts[n]) for n in counts]


@pytest.fixture(scope="module")
def calibration(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "tiny"
    return record(tiny_bundle, out, schedule="16:0.3,32:0.6,64", num=4, seed=0, sampling=SAMPLING)


def test_each_count_keeps_only_the_steps_it_serves(calibration):
    m = calibration.manifest
    steps = {n: m["counts"][str(n)]["steps"] for n in COUNTS}
    assert steps[16] == [0, 1, 2] and steps[32] == [3, 4] and steps[64] == [5, 6, 7]  # 8 evaluations: i/8 < 0.3, < 0.6
    for n in COUNTS:
        data = np.load(calibration.path / m["counts"][str(n)]["file"])
        assert data["x"].shape[1:] == (4, 16, 16) and len(data["t"]) == 8 * len(steps[n])  # 4 images x 2 (guidance)
        assert set(np.unique(data["y"])) == {0, 1, 2, 3, 10}  # the labels and the null class
    assert m["schedule"] == "16:0.3,32:0.6,64" and m["sampling"]["steps"] == 9 and m["mode"] == "schedule"


def test_trajectory_mode_gives_every_count_every_step(tiny_bundle, tmp_path):
    cal = record(
        tiny_bundle, tmp_path / "traj", schedule="16:0.3,32:0.6,64", num=4, mode="trajectory", sampling=SAMPLING
    )
    for n in COUNTS:
        assert cal.manifest["counts"][str(n)]["steps"] == list(range(8))


@pytest.mark.parametrize("precision", ["int8", "int8-static"])
def test_quantised_bundles_build_run_and_verify(tiny_checkpoints, calibration, tmp_path, precision):
    from medexport import Pipeline

    out = tmp_path / precision
    settings = BuildSettings(
        backend="onnxruntime",
        precision=precision,
        batch=BATCH,
        calibration=calibration.path if precision == "int8-static" else None,
    )
    build_bundle(sources(tiny_checkpoints), out, settings, show_progress=False)
    b = Bundle(out)
    for n in COUNTS:
        art = b.onnx(n)
        assert art.file == f"mediators-{n}.{precision}.onnx" and art.precision == precision
        quant = art.record["quantization"]
        assert quant["quantized_layers"] == 2 * 4  # 2 blocks x (qkv, proj, fc1, fc2)
        graph = onnx.load(str(out / art.file)).graph
        assert any(f.name == "MediatorAttention" for f in onnx.load(str(out / art.file)).functions)
        if precision == "int8":
            assert sum(nd.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for nd in graph.node) == 8
        else:
            zero_points = [i for i in graph.initializer if i.name.endswith("zero_point")]
            assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # symmetric
            assert quant["calibration"]["sha256"] == calibration.manifest["counts"][str(n)]["sha256"]
    results = verify_bundle(b)
    assert all(r.passed for r in results), results
    assert max(r.max_rel for r in results) > 1e-4  # really quantised: not the fp32 graph under another name
    pipe = Pipeline.from_bundle(out, backend="onnxruntime")
    got = pipe.sample([1, 2], seed=0, schedule="16:0.3,32:0.6,64", **SAMPLING)
    want = Pipeline.from_bundle(out, backend="torch").sample([1, 2], seed=0, schedule="16:0.3,32:0.6,64", **SAMPLING)
    rel = float((got.latents - want.latents).norm() / want.latents.norm())
    assert 1e-5 < rel < 0.2, rel


def test_a_new_calibration_rebuilds_exactly_the_counts_whose_data_changed(tiny_checkpoints, tiny_bundle, tmp_path):
    cal = tmp_path / "cal"
    record(tiny_bundle, cal, schedule="16:0.3,32:0.6,64", num=4, sampling=SAMPLING)
    out = tmp_path / "b"
    settings = BuildSettings(backend="onnxruntime", precision="int8-static", batch=BATCH, calibration=cal)
    build_bundle(sources(tiny_checkpoints), out, settings, show_progress=False)
    again = build_bundle(sources(tiny_checkpoints), out, settings, show_progress=False)
    assert not any(r.exported for r in again.counts)  # same data: nothing redone
    m = json.loads((cal / MANIFEST).read_text())  # count 64's data replaced by other (valid) rows
    other = record(tiny_bundle, tmp_path / "other", schedule="16:0.3,32:0.6,64", num=4, seed=1, sampling=SAMPLING)
    shutil.copy(other.path / "m64.npz", cal / "m64.npz")
    m["counts"]["64"] = other.manifest["counts"]["64"]
    (cal / MANIFEST).write_text(json.dumps(m))
    third = build_bundle(sources(tiny_checkpoints), out, settings, show_progress=False)
    assert [r.mediators for r in third.counts if r.exported] == [64]


def test_static_int8_without_calibration_names_the_command(tiny_checkpoints):
    with pytest.raises(ConfigError, match="medexport calibrate"):
        BuildSettings(precision="int8-static")
    with pytest.raises(ConfigError, match="--calibration applies to"):
        BuildSettings(precision="int8", calibration="calibration/x")


def test_calibration_from_other_weights_or_edited_is_refused(tiny_checkpoints, calibration, tmp_path):
    import medexport
    from tests.conftest import tiny_model

    other = medexport.save_checkpoint(tiny_model(16, seed=99), tmp_path / "other16.pt", form="trainer")
    settings = BuildSettings(backend="onnxruntime", precision="int8-static", batch=BATCH, calibration=calibration.path)
    with pytest.raises(CalibrationError, match="recorded from other weights.*medexport calibrate"):
        build_bundle([ModelSource(16, checkpoint=other)], tmp_path / "x", settings, show_progress=False)
    assert not (tmp_path / "x").exists()  # refused before anything was written

    edited = tmp_path / "edited"
    shutil.copytree(calibration.path, edited)
    data = np.load(edited / "m32.npz")
    np.savez(edited / "m32.npz", x=data["x"] * 2, t=data["t"], y=data["y"], step=data["step"])
    with pytest.raises(CalibrationError, match="does not match the hash.*medexport calibrate"):
        build_bundle(
            sources(tiny_checkpoints, [32]),
            tmp_path / "y",
            BuildSettings(backend="onnxruntime", precision="int8-static", batch=BATCH, calibration=edited),
            show_progress=False,
        )
    with pytest.raises(CalibrationError, match="no data for 128 mediators|not a calibration set"):
        CalibrationSet(tmp_path / "nothing-here")


def test_calibrating_with_counts_the_bundle_lacks_is_refused(tiny_bundle, tmp_path):
    with pytest.raises(ScheduleError, match="128"):
        record(tiny_bundle, tmp_path / "c", schedule="16:0.5,128", num=2, sampling=SAMPLING)
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_an_interrupted_calibration_leaves_nothing_that_looks_complete(tiny_bundle, tmp_path, monkeypatch):
    from medexport.quant import calibration as module

    calls = {"n": 0}
    real = np.savez

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second count is written
        return real(*args, **kwargs)

    monkeypatch.setattr(module.np, "savez", failing)
    with pytest.raises(KeyboardInterrupt):
        record(tiny_bundle, tmp_path / "c", schedule="16:0.3,32:0.6,64", num=2, sampling=SAMPLING)
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()


def test_calibrating_a_quantised_bundle_is_refused(tiny_checkpoints, tmp_path):
    out = tmp_path / "int8"
    build_bundle(
        sources(tiny_checkpoints, [16]),
        out,
        BuildSettings(backend="onnxruntime", precision="int8", batch=BATCH),
        show_progress=False,
    )
    with pytest.raises(CalibrationError, match="fp32 engines"):
        record(out, tmp_path / "c", num=2, sampling=SAMPLING)


def test_fp8_is_refused_for_onnx_runtime_and_exported_as_qdq_for_tensorrt(tiny_checkpoints, calibration, tmp_path):
    settings = BuildSettings(backend="onnxruntime", precision="fp8", batch=BATCH, calibration=calibration.path)
    with pytest.raises(BackendUnavailableError, match="TensorRT on GPUs with fp8.*--onnx-only"):
        build_bundle(sources(tiny_checkpoints, [16]), tmp_path / "x", settings, show_progress=False)
    out = tmp_path / "fp8"
    build_bundle(
        sources(tiny_checkpoints, [16, 32]),
        out,
        BuildSettings(precision="fp8", batch=BATCH, calibration=calibration.path, onnx_only=True),
        show_progress=False,
    )
    b = Bundle(out)
    for n in (16, 32):
        assert b.entry(n).engines == {}
        path = out / b.onnx(n).file
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        assert {o.domain: o.version for o in proto.opset_import}[""] >= 19  # float8 Q/DQ
        fp8 = onnx.TensorProto.FLOAT8E4M3FN
        produced_by = {o: nd for nd in proto.graph.node for o in nd.output}
        gemms = [nd for nd in proto.graph.node if nd.op_type in ("Gemm", "MatMul")]
        quantised = [
            nd
            for nd in gemms
            if produced_by.get(nd.input[1]) is not None and produced_by[nd.input[1]].op_type == "DequantizeLinear"
        ]
        assert len(quantised) == 8
        zps = {i.name: i.data_type for i in proto.graph.initializer if i.name.endswith("zero_point")}
        assert zps and set(zps.values()) == {fp8}
        # quantise around MediatorAttention, not through it; normalisations and softmax read float tensors
        assert not any(nd.op_type in ("QuantizeLinear", "DequantizeLinear") for f in proto.functions for nd in f.node)
        for nd in proto.graph.node:
            if nd.op_type in ("LayerNormalization", "Softmax", "MediatorAttention"):
                assert all(
                    produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in nd.input
                ), nd.name
    with pytest.raises(BackendUnavailableError, match="no onnxruntime engine|has no onnxruntime"):
        from medexport import Pipeline

        Pipeline.from_bundle(out, backend="onnxruntime")


def test_the_cli_calibrates_and_builds(tiny_bundle, tiny_checkpoints, tmp_path):
    from click.testing import CliRunner

    from medexport.cli import cli

    cal = tmp_path / "cal"
    r = CliRunner().invoke(
        cli,
        [
            "calibrate",
            str(tiny_bundle),
            "--schedule",
            "16:0.3,32:0.6,64",
            "--num",
            "2",
            "--sampler",
            "ode",
            "--method",
            "euler",
            "--steps",
            "9",
            "-o",
            str(cal),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "medexport build --precision int8-static --calibration" in r.output
    r = CliRunner().invoke(cli, ["calibrate", str(tiny_bundle), "--num", "2", "-o", str(cal)])
    assert r.exit_code == 1 and "add --force" in r.output
    (cal / "NOTES.md").write_text("mine")  # the user's file in the set: --force must not delete it
    r = CliRunner().invoke(cli, ["calibrate", str(tiny_bundle), "--num", "2", "--force", "-o", str(cal)])
    assert r.exit_code == 1 and "did not write there (NOTES.md)" in r.output
    assert (cal / "NOTES.md").read_text() == "mine"
    (cal / "NOTES.md").unlink()
    args = [
        "build",
        "--precision",
        "int8-static",
        "--batch",
        "1:2:8",
        "--calibration",
        str(cal),
        "-o",
        str(tmp_path / "b"),
    ] + [a for n, p in tiny_checkpoints.items() for a in ("--checkpoint", f"{n}={p}")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path / "b")])
    assert r.exit_code == 0 and "calibrated on" in r.output and "static-qdq int8" in r.output
    r = CliRunner().invoke(cli, ["build", "--precision", "int8-static", "-o", str(tmp_path / "c")])
    assert r.exit_code != 0 and "medexport calibrate" in r.output


def _tampered(calibration, folder, count=16, rows=None, drop=(), **arrays):
    """A copy of the set whose ``m<count>.npz`` holds ``arrays`` (the others kept but ``drop``), its hash updated
    to match."""
    from medexport.core.files import file_sha256

    shutil.copytree(calibration.path, folder)
    name = f"m{count}.npz"
    with np.load(folder / name) as z:
        data = {k: z[k] for k in z.files if k not in drop}
    data.update(arrays)
    np.savez(folder / name, **data)
    m = json.loads((folder / MANIFEST).read_text())
    m["counts"][str(count)]["sha256"] = file_sha256(folder / name)
    if rows is not None:
        m["counts"][str(count)]["rows"] = rows
    (folder / MANIFEST).write_text(json.dumps(m))
    return folder


def _build_static(tiny_checkpoints, cal, out, counts=(16,)):
    return build_bundle(
        sources(tiny_checkpoints, counts),
        out,
        BuildSettings(backend="onnxruntime", precision="int8-static", batch=BATCH, calibration=cal),
        show_progress=False,
    )


def test_rows_of_another_shape_are_refused_before_anything_is_built(tiny_checkpoints, calibration, tmp_path):
    with np.load(calibration.path / "m16.npz") as z:
        x = z["x"]
    cal = _tampered(calibration, tmp_path / "cal", x=np.ascontiguousarray(x[:, :, :8, :8]))  # hash updated to match
    with pytest.raises(
        CalibrationError,
        match=r"m16.npz holds rows of shape 4x8x8 where the 16-mediator model "
        r"takes 4x16x16: the data was recorded for another model; record it "
        r"from a bundle of this one: medexport calibrate",
    ):
        _build_static(tiny_checkpoints, cal, tmp_path / "b", counts=COUNTS)
    assert not (tmp_path / "b").exists()  # refused before anything was written

    from click.testing import CliRunner

    from medexport.cli import cli

    args = [
        "build",
        "--precision",
        "int8-static",
        "--batch",
        "1:2:16",
        "--calibration",
        str(cal),
        "-o",
        str(tmp_path / "c"),
        "--checkpoint",
        f"16={tiny_checkpoints[16]}",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "holds rows of shape 4x8x8" in r.output and "Traceback" not in r.output


def test_the_quantiser_checks_rows_against_the_graph(tiny_bundle, calibration, tmp_path):
    """Data that reaches the quantiser without the build's checks is still refused in our words."""
    from medexport.core.files import file_sha256
    from medexport.quant.calibration import CountData
    from medexport.quant.quantize import quantize_graph

    (graph,) = tiny_bundle.glob("mediators-16.fp32.onnx")
    cal = _tampered(
        calibration,
        tmp_path / "cal",
        x=np.zeros((3, 4, 8, 8), np.float32),
        t=np.zeros(3, np.float32),
        y=np.zeros(3, np.int64),
        step=np.zeros(3, np.int32),
    )
    data = CountData(16, cal / "m16.npz", file_sha256(cal / "m16.npz"), 3, {}, "medexport calibrate BUNDLE")
    with pytest.raises(
        CalibrationError,
        match=r"m16.npz: its 'x' rows \(float32 3x4x8x8\) do not fit the input 'x' "
        r"of mediators-16.fp32.onnx \(float32 Bx4x16x16\).*medexport "
        r"calibrate BUNDLE",
    ):
        quantize_graph([graph], tmp_path / "q.onnx", "int8-static", data)
    assert not (tmp_path / "q.onnx").exists() and not list(tmp_path.glob("q.onnx*"))


@pytest.mark.parametrize("case", ["objects", "dtype", "rows", "missing", "many"])
def test_a_damaged_calibration_file_or_manifest_is_a_clear_error(tiny_checkpoints, calibration, tmp_path, case):
    with np.load(calibration.path / "m16.npz") as z:
        x = z["x"]
    folder = tmp_path / "cal"
    if case == "objects":
        cal = _tampered(calibration, folder, x=np.array([{"rows": 1}, None], dtype=object))
        expected = r"m16.npz is not a calibration file of medexport \(it holds Python objects, which are never "
    elif case == "dtype":
        cal = _tampered(calibration, folder, x=x.astype(np.float64))
        expected = r"m16.npz: 'x' is float64 of shape .* where a calibration file holds float32 \(R, C, S, S\)"
    elif case == "rows":
        cal = _tampered(calibration, folder, x=x[:-1])
        expected = r"m16.npz holds rows that do not fit together"
    elif case == "missing":
        cal = _tampered(calibration, folder, drop=("t", "y", "step"))
        expected = r"m16.npz lacks the arrays t, y \(it holds x\)"
    else:
        cal = _tampered(calibration, folder, rows="many")
        expected = r"calibration.json: the rows of 16 mediators must be a whole number of at least 1, got 'many'"
    with pytest.raises(CalibrationError, match=expected + ".*medexport calibrate"):
        _build_static(tiny_checkpoints, cal, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_calibrate_prints_its_output_path_as_text_not_markup(tiny_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from medexport.cli import cli

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(
        cli,
        [
            "calibrate",
            str(tiny_bundle),
            "--num",
            "1",
            "--steps",
            "3",
            "--sampler",
            "ode",
            "--method",
            "euler",
            "-o",
            "odd[/]cal",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "calibration odd[/]cal" in r.output and "Traceback" not in r.output
