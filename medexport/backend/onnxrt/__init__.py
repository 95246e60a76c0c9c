"""The ONNX Runtime backend: its engine is the exported ONNX file itself plus session settings (CPU, or CUDA
with onnxruntime-gpu). Triton serves it with its ``onnxruntime_onnx`` platform or, where only the python backend
exists, with ONNX Runtime inside a python model (``triton_model.py``)."""

from __future__ import annotations

from pathlib import Path

from ...errors import BackendUnavailableError
from ..registry import BuildInputs, EngineBackend, RunnerInputs, TritonVariant
from .session import available_providers, default_providers, session_from_onnx

__all__ = ["BACKEND", "OnnxrtRunner", "available_providers", "default_providers", "session_from_onnx"]


def precision_problem(precision: str, providers: list[str]) -> str | None:
    """Why ``providers`` cannot run a ``precision`` graph, or None (the one place this rule lives)."""
    if precision == "bf16" and "CUDAExecutionProvider" not in providers:
        return (
            "bf16 engines need TensorRT or onnxruntime-gpu: ONNX Runtime's CPU provider has no bfloat16 "
            "kernels. Use --precision fp32 or fp16 here"
        )
    if precision == "fp8":
        return (
            "fp8 Q/DQ engines are for TensorRT on GPUs with fp8 tensor cores (Ada, Hopper: compute capability "
            ">= 8.9); ONNX Runtime has no fast fp8 kernels. Build with --backend tensorrt on such a machine, or "
            "write the fp8 ONNX here with --onnx-only and compile it there; on this machine use --precision "
            "int8 or int8-static"
        )
    return None


class OnnxRuntimeBackend(EngineBackend):
    name = "onnxruntime"
    preference = 20
    triton = (
        TritonVariant(
            "python",
            'backend: "python"',
            "model.onnx",
            python_model=Path(__file__).parent / "triton_model.py",
            threads_parameter=True,
        ),
        TritonVariant("onnx", 'platform: "onnxruntime_onnx"', "model.onnx"),
    )

    def status(self) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "the onnxruntime package is not installed (pip install onnxruntime)"
        return True, f"ONNX Runtime ({', '.join(default_providers())})"

    def check_precision(self, precision: str) -> None:
        problem = precision_problem(precision, default_providers())
        if problem:
            raise BackendUnavailableError(problem + ".")

    def key_parts(self, onnx_sha256: str, settings, options: dict) -> tuple:
        import onnxruntime as ort

        return ("ort", onnx_sha256, str(settings.batch), ort.__version__, default_providers())

    def build(self, inputs: BuildInputs) -> tuple[list[Path], dict]:
        providers = default_providers()
        session_from_onnx(inputs.onnx_files[0], providers=providers)  # opening it proves it runs here
        return list(inputs.onnx_files), {
            "providers": providers,
            "hardware": {"device": "cuda" if providers[0].startswith("CUDA") else "cpu"},
        }

    def runnable(self, record: dict, precision: str) -> tuple[bool, str]:
        avail = available_providers()
        missing = [p for p in record.get("providers", []) if p not in avail]
        if missing:
            return False, f"missing providers {missing} (pip install onnxruntime-gpu for CUDA)"
        problem = precision_problem(precision, avail)
        return (False, problem) if problem else (True, "yes")

    def runner(self, inputs: RunnerInputs):
        from .runner import OnnxrtRunner

        return OnnxrtRunner(
            inputs.path,
            inputs.mediators,
            precision=inputs.precision,
            batch_range=inputs.batch,
            providers=default_providers(inputs.device),
            threads=inputs.threads,
            sha256=inputs.sha256,
            shape=inputs.shape,
        )


def __getattr__(name: str):
    if name == "OnnxrtRunner":  # torch: loaded on first use
        from .runner import OnnxrtRunner

        return OnnxrtRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BACKEND = OnnxRuntimeBackend()
