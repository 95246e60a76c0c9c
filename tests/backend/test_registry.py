"""The backend registry: one object per engine backend, found by name; "auto" means one thing everywhere; a new
backend is a local change (a test backend is registered here and built, opened and sampled without touching
the builder or the runtime)."""

import sys
import types

import pytest
import torch

from medexport.backend import registry
from medexport.backend.registry import EngineBackend
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
    """A test backend: its engine is a copy of the ONNX graph, run by ONNX Runtime."""

    name = "copy"
    title = "Copy"

    def status(self):
        return True, "always"

    def key_parts(self, onnx_sha256, settings):
        return ("copy", onnx_sha256, str(settings.batch))

    def build(self, onnx_files, new_file, settings, latent_shape, folder):
        if len(onnx_files) != 1:
            raise BackendUnavailableError("the copy backend takes graphs without external data")
        dst = new_file(".copy.onnx")
        dst.write_bytes(onnx_files[0].read_bytes())
        return [dst], {"copied_from": onnx_files[0].name}

    def runnable(self, record, precision):
        return (True, "yes") if record.get("copied_from") else (False, "not a copy")

    def runner(self, path, mediators, *, precision, batch, record, sha256, device, threads, shared):
        from medexport.backend import OnnxrtRunner

        runner = OnnxrtRunner(path, mediators, precision=precision, batch_range=batch, threads=1, sha256=sha256)
        runner.backend = "copy"
        return runner


def test_a_new_backend_is_one_object_in_its_own_module(monkeypatch, tiny_checkpoints, tmp_path):
    from medexport import Pipeline
    from medexport.core.batch import BatchRange
    from medexport.bundle import BuildSettings, ModelSource, build_bundle, open_bundle

    module = types.ModuleType("medexport_test_copy_backend")
    module.BACKEND = CopyBackend()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry._MODULES, "copy", module.__name__)

    out = tmp_path / "b"
    build_bundle([ModelSource(16, checkpoint=tiny_checkpoints[16])], out,
                 BuildSettings(backend="copy", batch=BatchRange(1, 2, 4)), show_progress=False)
    bundle = open_bundle(out)
    engine = bundle.engine(16, "copy")
    assert engine.file == "mediators-16.fp32.copy.onnx" and engine.record["copied_from"] == "mediators-16.fp32.onnx"
    pipe = Pipeline.from_bundle(out, backend="copy")
    result = pipe.sample([1, 2], seed=0, steps=3, cfg_scale=1.0)
    assert {e.backend for e in result.trace} == {"copy"} and torch.isfinite(result.latents).all()

    (out / engine.file).write_bytes(b"not the engine")  # its files are checked like any other backend's
    with pytest.raises(BundleError, match="does not match the hash"):
        Pipeline.from_bundle(out, backend="copy")
