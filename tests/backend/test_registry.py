"""The backend registry: one object per engine backend, found by name; "auto" means one thing everywhere; a new
backend is a local change (a test backend is registered here and built, opened and sampled without touching
the builder or the runtime)."""

from pathlib import Path

import pytest
import torch

from medexport.backend import onnxrt, registry
from medexport.backend.registry import BackendOption, BuildInputs, EngineBackend, RunnerInputs, TritonVariant
from medexport.core.batch import BatchRange
from medexport.errors import BackendUnavailableError, BundleError


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="unknown engine backend 'openvino'.*onnxruntime, tensorrt"):
        registry.get("openvino")


def test_auto_takes_the_first_backend_that_can_build_here(monkeypatch):
    monkeypatch.setattr(registry.get("tensorrt"), "status", lambda: (False, "TensorRT is not installed"))
    backend, why = registry.resolve("auto", "fp32")
    assert backend.name == "onnxruntime" and "auto:" in why and "TensorRT is not installed" in why
    with pytest.raises(BackendUnavailableError, match="--backend tensorrt is not available here: TensorRT is not"):
        registry.resolve("tensorrt")


def test_bf16_on_onnxruntime_without_cuda_is_refused_by_the_one_rule(monkeypatch):
    from medexport.backend import onnxrt

    monkeypatch.setattr(registry.get("tensorrt"), "status", lambda: (False, "TensorRT is not installed"))
    monkeypatch.setattr(onnxrt, "default_providers", lambda device=None: ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="bf16 engines need TensorRT or onnxruntime-gpu"):
        registry.resolve("onnxruntime", "bf16")
    with pytest.raises(BackendUnavailableError, match="no engine backend can build here.*bf16"):
        registry.resolve("auto", "bf16")
    monkeypatch.setattr(onnxrt, "available_providers", lambda: ["CPUExecutionProvider"])
    ok, why = registry.get("onnxruntime").runnable({"providers": ["CPUExecutionProvider"]}, "bf16")
    assert not ok and "bfloat16" in why


class CopyBackend(EngineBackend):
    """A test backend: its engine is a copy of the ONNX graph, run by ONNX Runtime, served by Triton's python
    backend with ONNX Runtime inside (the file the ONNX Runtime backend ships for that)."""

    name = "copy"
    preference = None  # never chosen by "auto"
    options = (BackendOption("copy_check", "copy-check", "flag", True, "Check the copy byte for byte."),)
    triton = (
        TritonVariant(
            "copy-python",
            'backend: "python"',
            "model.onnx",
            python_model=Path(onnxrt.__file__).parent / "triton_model.py",
            threads_parameter=True,
        ),
    )

    def status(self):
        return True, "always"

    def key_parts(self, onnx_sha256, settings, options):
        return ("copy", onnx_sha256, str(settings.batch), options["copy_check"])

    def build(self, inputs: BuildInputs):
        if len(inputs.onnx_files) != 1:
            raise BackendUnavailableError("the copy backend takes graphs without external data")
        dst = inputs.new_file(".copy.onnx")
        dst.write_bytes(inputs.onnx_files[0].read_bytes())
        if inputs.options["copy_check"]:
            assert dst.read_bytes() == inputs.onnx_files[0].read_bytes()
        assert inputs.model().config.mediators == inputs.mediators  # the lazy PyTorch model is there too
        return [dst], {"copied_from": inputs.onnx_files[0].name}

    def runnable(self, record, precision):
        return (True, "yes") if record.get("copied_from") else (False, "not a copy")

    def runner(self, inputs: RunnerInputs):
        from medexport.backend.onnxrt.runner import OnnxrtRunner

        runner = OnnxrtRunner(
            inputs.path,
            inputs.mediators,
            precision=inputs.precision,
            batch_range=inputs.batch,
            threads=1,
            sha256=inputs.sha256,
        )
        runner.backend = "copy"
        return runner


@pytest.fixture
def copy_backend():
    backend = registry.register(CopyBackend())
    yield backend
    registry.unregister(backend.name)


def build_copy_bundle(checkpoints, out):
    from medexport.bundle import BuildSettings, ModelSource, build_bundle

    build_bundle(
        [ModelSource(n, checkpoint=checkpoints[n]) for n in (16, 64)],
        out,
        BuildSettings(backend="copy", batch=BatchRange(1, 2, 4), backend_options={"copy_check": True}),
        show_progress=False,
    )
    return out


def test_a_new_backend_is_one_object_registered_from_its_own_module(copy_backend, tiny_checkpoints, tmp_path):
    from medexport import Pipeline
    from medexport.bundle import open_bundle

    assert "copy" in registry.build_choices() and "copy" not in registry.preference()
    out = build_copy_bundle(tiny_checkpoints, tmp_path / "b")
    bundle = open_bundle(out)
    engine = bundle.engine(16, "copy")
    assert engine.file == "mediators-16.fp32.copy.onnx" and engine.record["copied_from"] == "mediators-16.fp32.onnx"
    assert bundle.manifest["build"]["copy_check"] is True  # its own option, recorded with the build
    pipe = Pipeline.from_bundle(out, backend="copy")
    result = pipe.sample([1, 2], seed=0, sampler="ode", method="euler", steps=3, cfg_scale=2.0)
    assert {e.backend for e in result.trace} == {"copy"} and torch.isfinite(result.latents).all()
    reference = Pipeline.from_bundle(out, backend="torch").sample(
        [1, 2], seed=0, sampler="ode", method="euler", steps=3, cfg_scale=2.0
    )
    torch.testing.assert_close(result.latents, reference.latents, atol=1e-4, rtol=1e-4)

    (out / engine.file).write_bytes(b"not the engine")  # its files are checked like any other backend's
    with pytest.raises(BundleError, match="does not match the hash"):
        Pipeline.from_bundle(out, backend="copy")


def test_backends_are_found_by_folder():
    import medexport.backend as package

    folders = sorted(p.name for p in Path(package.__file__).parent.iterdir() if (p / "__init__.py").is_file())
    found = {registry.get(n).__module__.split(".")[2] for n in registry.names() if n != "copy"}
    assert found == set(folders) and {"onnxruntime", "tensorrt", "torch"} <= set(registry.names())
    assert registry.preference() == ("tensorrt", "onnxruntime")  # "auto": the same order for build and sample
    assert not registry.get("torch").builds_engine and "torch" not in registry.build_choices()
    with pytest.raises(BackendUnavailableError, match="builds no engine"):
        registry.resolve("torch")
    with pytest.raises(ValueError, match="registered already"):
        registry.register(type("Other", (CopyBackend,), {"name": "onnxruntime"})())
