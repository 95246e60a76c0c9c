"""The TensorRT backend: strongly typed plans built through Polygraphy, with the mediator-attention plugin where
it registers (imported lazily: nothing here imports tensorrt at module load)."""

from __future__ import annotations

from pathlib import Path

from ..registry import BackendOption, BuildInputs, EngineBackend, RunnerInputs, TritonVariant


class TensorRTBackend(EngineBackend):
    name = "tensorrt"
    preference = 10
    options = (
        BackendOption(
            "plugin",
            "plugin",
            "flag",
            True,
            "TensorRT engines: run MediatorAttention as the custom plugin where it registers (TensorRT >= "
            "10.9 with triton); --no-plugin builds the op's ONNX function body.",
        ),
        BackendOption(
            "trt_optimization_level",
            "trt-optimization-level",
            "int",
            3,
            "TensorRT builder optimisation level (higher builds slower, may run faster).",
            choices=(0, 5),
        ),
    )
    triton = (TritonVariant("tensorrt", 'platform: "tensorrt_plan"', "model.plan", kind="KIND_GPU"),)

    def status(self) -> tuple[bool, str]:
        from .engine import tensorrt_status

        return tensorrt_status()

    def check_precision(self, precision: str) -> None:
        if precision == "int8":
            from ...errors import BackendUnavailableError

            raise BackendUnavailableError(
                "--precision int8 is ONNX Runtime's dynamic form (run-time activation "
                "quantisation), which TensorRT does not build: use --precision "
                "int8-static (calibrated Q/DQ) for TensorRT"
            )

    def key_parts(self, onnx_sha256: str, settings, options: dict) -> tuple:
        from .engine import hardware

        return (
            "trt",
            onnx_sha256,
            str(settings.batch),
            options["plugin"],
            options["trt_optimization_level"],
            hardware(),
        )

    def build(self, inputs: BuildInputs) -> tuple[list[Path], dict]:
        from .engine import TrtBuild, build_plan

        plan = inputs.new_file(".plan")
        record = build_plan(
            inputs.onnx_files[0],
            plan,
            TrtBuild(
                batch=inputs.settings.batch,
                latent_shape=inputs.latent_shape,
                plugin=inputs.options["plugin"],
                timing_cache=inputs.folder / "timing.cache",
                optimization_level=inputs.options["trt_optimization_level"],
            ),
        )
        return [plan], {"hardware": record, "plugin": record["plugin"]}

    def runnable(self, record: dict, precision: str) -> tuple[bool, str]:
        from .engine import plan_mismatch, tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            return False, why
        mismatch = plan_mismatch(record.get("hardware", {}))
        return (False, mismatch) if mismatch else (True, "yes")

    def runner(self, inputs: RunnerInputs):
        from .engine import TrtRunner

        return TrtRunner(
            inputs.path,
            inputs.mediators,
            precision=inputs.precision,
            batch_range=inputs.batch,
            shared_memory=inputs.shared,
            recorded_hardware=inputs.record.get("hardware"),
            shape=inputs.shape,
        )

    def shared_state(self) -> object | None:
        from .engine import SharedActivationMemory

        return SharedActivationMemory()  # engines never run at the same time: one activation buffer for all

    def memory_outside_torch(self, runners: list) -> int:
        sizes = [r.memory_bytes() for r in runners]
        return max(sizes) if sizes and all(s is not None for s in sizes) else 0


BACKEND = TensorRTBackend()
