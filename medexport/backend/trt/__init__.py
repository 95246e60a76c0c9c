"""The TensorRT backend: strongly typed plans built through Polygraphy, with the mediator-attention plugin where
it registers (imported lazily: nothing here imports tensorrt at module load)."""

from __future__ import annotations

from pathlib import Path

from ..base import BatchRange, Runner
from ..registry import EngineBackend


class TensorRTBackend(EngineBackend):
    name = "tensorrt"
    title = "TensorRT"

    def status(self) -> tuple[bool, str]:
        from .engine import tensorrt_status

        return tensorrt_status()

    def check_precision(self, precision: str) -> None:
        if precision == "int8":
            from ...errors import BackendUnavailableError

            raise BackendUnavailableError("--precision int8 is ONNX Runtime's dynamic form (run-time activation "
                                          "quantisation), which TensorRT does not build: use --precision "
                                          "int8-static (calibrated Q/DQ) for TensorRT")

    def key_parts(self, onnx_sha256: str, settings) -> tuple:
        from .engine import hardware

        return ("trt", onnx_sha256, str(settings.batch), settings.plugin, settings.trt_optimization_level,
                hardware())

    def build(self, onnx_files, new_file, settings, latent_shape, folder) -> tuple[list[Path], dict]:
        from .engine import TrtBuild, build_plan

        plan = new_file(".plan")
        record = build_plan(onnx_files[0], plan, TrtBuild(batch=settings.batch, latent_shape=latent_shape,
                                                          plugin=settings.plugin, timing_cache=folder / "timing.cache",
                                                          optimization_level=settings.trt_optimization_level))
        return [plan], {"hardware": record, "plugin": record["plugin"]}

    def runnable(self, record: dict, precision: str) -> tuple[bool, str]:
        from .engine import plan_mismatch, tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            return False, why
        mismatch = plan_mismatch(record.get("hardware", {}))
        return (False, mismatch) if mismatch else (True, "yes")

    def runner(self, path, mediators, *, precision, batch: BatchRange | None, record, sha256, device, threads,
               shared) -> Runner:
        from .engine import TrtRunner

        return TrtRunner(path, mediators, precision=precision, batch_range=batch, shared_memory=shared,
                         recorded_hardware=record.get("hardware"))

    def shared_state(self) -> object | None:
        from .engine import SharedActivationMemory

        return SharedActivationMemory()  # engines never run at the same time: one activation buffer for all

    def memory_outside_torch(self, runners: list[Runner]) -> int:
        sizes = [r.memory_bytes() for r in runners]
        return max(sizes) if sizes and all(s is not None for s in sizes) else 0


BACKEND = TensorRTBackend()
