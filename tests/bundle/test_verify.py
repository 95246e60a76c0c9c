"""``verify`` passes on a good bundle and fails on a swapped engine."""

import json
import os

import pytest

from medexport.bundle import MANIFEST, Bundle, verify_bundle
from medexport.core.files import file_sha256
from tests.conftest import COUNTS, copy_bundle


def test_verify_passes_on_good_bundle(tiny_bundle):
    results = verify_bundle(Bundle(tiny_bundle))
    assert [(r.mediators, r.backend) for r in results] == [(n, "onnxruntime") for n in COUNTS]
    for r in results:
        assert r.passed and r.max_rel < 1e-4 and r.cases >= 8 and r.tolerance == 1e-4


def test_verify_fails_on_engine_swapped_for_another_count(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    # put the 64-mediator graph where the 16-mediator engine should be, and make the manifest vouch for it,
    # so only the numerical comparison can catch it
    (bundle / "mediators-16.fp32.onnx").write_bytes((bundle / "mediators-64.fp32.onnx").read_bytes())
    m = json.loads((bundle / MANIFEST).read_text())
    sha = file_sha256(bundle / "mediators-16.fp32.onnx")
    m["counts"]["16"]["engines"]["onnxruntime"]["sha256"] = sha
    m["counts"]["16"]["engines"]["onnxruntime"]["hashes"] = [sha]
    (bundle / MANIFEST).write_text(json.dumps(m))
    (r,) = verify_bundle(Bundle(bundle), counts=[16])
    assert not r.passed and r.max_rel > 1e-2 and r.error is None


def test_verify_reports_hash_mismatch_as_failure(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    with open(bundle / "mediators-64.fp32.onnx", "ab") as f:
        f.write(b"x")
    (r,) = verify_bundle(Bundle(bundle), counts=[64])
    assert not r.passed and "hash" in r.error


def test_fp16_bundle_builds_and_verifies_within_its_tolerance(tiny_checkpoints, tmp_path):
    from medexport.bundle import BuildSettings, ModelSource, build_bundle
    from medexport.core.batch import BatchRange

    out = tmp_path / "fp16"
    build_bundle(
        [ModelSource(32, checkpoint=tiny_checkpoints[32])],
        out,
        BuildSettings(backend="onnxruntime", precision="fp16", batch=BatchRange(1, 2, 4)),
        show_progress=False,
    )
    bundle = Bundle(out)
    assert bundle.entry(32).onnx.file == "mediators-32.fp16.onnx"
    (r,) = verify_bundle(bundle)
    assert r.precision == "fp16" and r.tolerance == 2e-2
    assert r.passed and 1e-6 < r.max_rel < 2e-2  # really half precision, and within tolerance


def test_external_weight_data_is_hash_checked(tmp_path, tiny_checkpoints, monkeypatch):
    """A large model's ONNX file keeps its weights in a separate .data file: changing it must be caught."""
    from medexport.bundle import BuildSettings, ModelSource, build_bundle, engine_runner
    from medexport.core.batch import BatchRange
    from medexport.errors import BundleError
    from medexport.export import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # the tiny model written as if > 2 GB
    out = tmp_path / "big"
    build_bundle(
        [ModelSource(16, checkpoint=tiny_checkpoints[16])],
        out,
        BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)),
        show_progress=False,
    )
    b = Bundle(out)
    data = out / b.engine(16, "onnxruntime").files[1]
    assert data.name.endswith(".data")
    engine_runner(b, 16, "onnxruntime")  # intact: fine
    blob = bytearray(data.read_bytes())
    blob[100] ^= 1
    st = data.stat()
    data.write_bytes(bytes(blob))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only the content changed
    with pytest.raises(BundleError, match=r"\.data does not match the hash"):
        engine_runner(Bundle(out), 16, "onnxruntime")


@pytest.mark.parametrize("files", [["../outside.onnx"], [".hidden"], "mediators-16.fp32.onnx"])
def test_manifest_file_lists_are_checked(tiny_bundle, tmp_path, files):
    from medexport.errors import BundleError

    path = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["counts"]["16"]["engines"]["onnxruntime"]["files"] = files
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="plain file name|same length"):
        Bundle(path)


def test_nan_outputs_fail_verification(tiny_bundle, tmp_path, monkeypatch):
    """A comparison with NaN must fail: NaN is neither larger nor smaller than the tolerance."""
    from medexport.bundle import verify as verify_module

    bundle = Bundle(copy_bundle(tiny_bundle, tmp_path / "b"))
    real = bundle.torch_model

    def nan_model(n):
        model = real(n)
        with __import__("torch").no_grad():
            model.final_layer.linear.bias.fill_(float("nan"))
        return model

    monkeypatch.setattr(bundle, "torch_model", nan_model)
    (r,) = verify_module.verify_bundle(bundle, counts=[16])
    assert not r.passed and r.max_rel == float("inf") and "PyTorch reference output NaN/inf" in r.error


def test_a_file_swapped_or_deleted_after_opening_never_runs(tiny_bundle, tmp_path):
    """The hash is checked on the bytes the session is made from, not only when the bundle is opened."""
    import shutil

    import torch

    from medexport import Pipeline
    from medexport.errors import BundleError

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    pipe = Pipeline.from_bundle(bundle, backend="onnxruntime")  # runners made, sessions not yet
    name16 = Bundle(bundle).engine(16, "onnxruntime").file
    name64 = Bundle(bundle).engine(64, "onnxruntime").file
    (bundle / name16).write_bytes((bundle / name64).read_bytes())  # another count's engine under 16's name
    with pytest.raises(BundleError, match="changed after its bundle was opened"):
        pipe.sample([1], seed=0, sampler="ode", method="euler", steps=3, schedule="16")
    pipe = Pipeline.from_bundle(copy_bundle(tiny_bundle, tmp_path / "c"), backend="onnxruntime")
    shutil.rmtree(tmp_path / "c")
    with pytest.raises(BundleError, match="moved or deleted"):
        pipe.sample([1], seed=0, sampler="ode", method="euler", steps=3)
    assert torch.is_tensor(
        Pipeline.from_bundle(tiny_bundle).sample([1], seed=0, sampler="ode", method="euler", steps=3).latents
    )
