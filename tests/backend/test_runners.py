"""Every backend through the same runner interface, on the same inputs; TensorRT where it exists."""

import pytest
import torch

import medexport
from medexport.backend import OnnxrtRunner, TorchRunner
from medexport.backend.trt.engine import tensorrt_status
from medexport.bundle import resolve_backend
from medexport.core.batch import BatchRange
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


def bundle_runners(bundle, checkpoint, n):
    """Every backend that runs here, as the API hands its runners out (and the reference made by hand)."""
    from medexport.bundle import Bundle, engine_runner

    yield TorchRunner(medexport.load_checkpoint(checkpoint))
    for backend in (
        "onnxruntime",
        "torch",
        *(("tensorrt",) if TRT_OK and "tensorrt" in Bundle(bundle).backends(n) else ()),
    ):
        yield engine_runner(Bundle(bundle), n, backend)


def test_every_backend_refuses_bad_inputs_alike(tiny_bundle, tiny_checkpoints):
    """Label -1 once ran on ONNX Runtime (its Gather read the null class's row) and raised an IndexError in
    PyTorch: every runner now refuses it, and any input no model can take, with one error and one message."""
    from medexport.errors import InputError

    x, t, _ = model_inputs(TINY, batch=2)
    null = TINY.num_classes  # the unconditional label guidance passes: legitimate
    outside = (
        r"labels \[-1\] are outside 0\.\.10 \(classes 0\.\.9, and 10, the null class that guidance "
        r"passes\)"
    )
    cases = [
        ((x, t, torch.tensor([3, -1])), outside),
        ((x, t, torch.tensor([null + 1, 2])), r"labels \[11\] are outside 0\.\.10"),
        ((x[:, :, :8, :8], t, torch.tensor([1, 2])), r"x must be \(B, 4, 16, 16\), got \(2, 4, 8, 8\)"),
        ((x, t[:1], torch.tensor([1, 2])), r"t must be \(2,\), one per sample of x, got \(1,\)"),
        ((x, t, torch.tensor([1.0, 2.0])), r"y must be integer class labels \(int64\), got torch.float32"),
        ((x.long(), t, torch.tensor([1, 2])), r"x must be floating point \(float32\), got torch.int64"),
        ((x.numpy(), t, torch.tensor([1, 2])), r"x must be a torch tensor, got ndarray"),
        ((x[:0], t[:0], torch.tensor([], dtype=torch.long)), r"x holds no samples"),
    ]
    for runner in bundle_runners(tiny_bundle, tiny_checkpoints[16], 16):
        with runner:
            for args, message in cases:
                with pytest.raises(InputError, match=rf"^the {runner.backend}:16 runner: {message}"):
                    runner(*args)
            y = torch.tensor([null, 0])
            assert runner(x, t, y).shape == x.shape  # the null class runs
            y[0] = -1  # the same labels, changed in place: checked again
            with pytest.raises(InputError, match=outside):
                runner(x, t, y)


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
    build_bundle(
        [ModelSource(16, checkpoint=tiny_checkpoints[16])],
        out,
        BuildSettings(backend="tensorrt", batch=BatchRange(1, 2, 4)),
        show_progress=False,
    )
    bundle = Bundle(out)
    entry = bundle.engine(16, "tensorrt")
    assert entry.file.endswith(".plan") and entry.record["hardware"]["compute_capability"]
    (result,) = verify_bundle(bundle, backends=["tensorrt"])
    assert result.passed, result
