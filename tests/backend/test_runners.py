"""Every backend through the same runner interface, on the same inputs; TensorRT where it exists."""

import pytest
import torch

import medexport
from medexport.backend import OnnxrtRunner, TorchRunner
from medexport.core.batch import BatchRange
from medexport.backend.trt.engine import tensorrt_status
from medexport.bundle import resolve_backend
from tests.conftest import TINY, model_inputs

TRT_OK, TRT_WHY = tensorrt_status()


def runners_for(bundle, checkpoint, n):
    yield TorchRunner(medexport.load_checkpoint(checkpoint))
    yield OnnxrtRunner(bundle / f"mediators-{n}.fp32.onnx", n, batch_range=BatchRange(1, 2, 4))
    if TRT_OK:
        from medexport.bundle import Bundle, engine_runner

        if "tensorrt" in Bundle(bundle).backends(n):
            yield engine_runner(Bundle(bundle), n, "tensorrt")


@pytest.mark.parametrize("n", [16, 32])
@pytest.mark.parametrize("batch", [1, 3, 7])  # 7 is beyond the engines' maximum of 4: split into chunks
def test_all_backends_agree(tiny_bundle, tiny_checkpoints, n, batch):
    x, t, y = model_inputs(TINY, batch=batch, seed=batch)
    with torch.no_grad():
        want = medexport.load_checkpoint(tiny_checkpoints[n])(x, t, y)
    for runner in runners_for(tiny_bundle, tiny_checkpoints[n], n):
        with runner:
            got = runner(x, t, y).cpu()
        assert got.shape == want.shape and got.dtype == torch.float32, runner.backend
        rel = (got - want).abs().max() / want.abs().max()
        assert rel < 1e-4, f"{runner.backend}: relative error {rel:.2e}"


def test_batch_range_parse_and_chunks():
    r = BatchRange.parse("2:4:8")
    assert (r.min, r.opt, r.max) == (2, 4, 8) and str(r) == "2:4:8"
    assert r.chunks(9) == [5, 4] and r.chunks(17) == [6, 6, 5] and r.chunks(8) == [8]
    assert BatchRange.parse("4") == BatchRange(4, 4, 4)
    for bad in ("0:1:2", "4:2:8", "1:2", "x"):
        with pytest.raises(ValueError):
            BatchRange.parse(bad)


def test_padding_below_minimum(tiny_bundle, tiny_checkpoints):
    runner = OnnxrtRunner(tiny_bundle / "mediators-16.fp32.onnx", 16, batch_range=BatchRange(2, 2, 4))
    x, t, y = model_inputs(TINY, batch=1)
    with torch.no_grad():
        want = medexport.load_checkpoint(tiny_checkpoints[16])(x, t, y)
    torch.testing.assert_close(runner(x, t, y), want, rtol=1e-4, atol=1e-5)


def test_auto_backend_says_why():
    backend, why = resolve_backend("auto")
    if TRT_OK:
        assert backend == "tensorrt"
    else:
        assert backend == "onnxruntime" and "TensorRT" in why


@pytest.mark.skipif(not TRT_OK, reason=f"TensorRT backend unavailable: {TRT_WHY}")
def test_tensorrt_plan_build_and_run(tiny_checkpoints, tmp_path):
    from medexport.bundle import BuildSettings, ModelSource, build_bundle, verify_bundle
    from medexport.bundle.manifest import Bundle

    out = tmp_path / "trt"
    build_bundle([ModelSource(16, checkpoint=tiny_checkpoints[16])], out,
                 BuildSettings(backend="tensorrt", batch=BatchRange(1, 2, 4)), show_progress=False)
    bundle = Bundle(out)
    entry = bundle.engine(16, "tensorrt")
    assert entry.file.endswith(".plan") and entry.record["hardware"]["compute_capability"]
    (result,) = verify_bundle(bundle, backends=["tensorrt"])
    assert result.passed, result
