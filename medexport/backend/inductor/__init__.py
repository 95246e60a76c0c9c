"""torch.compile (TorchInductor) as a backend: it builds nothing into the bundle and compiles the PyTorch model
the engines were built from when a runner is made, fusing the block's small operations (pooling, biases,
depth-wise conv, modulation) around the mediator-attention op, whose own kernel (Triton on CUDA) it calls. On
CUDA it replays CUDA graphs (``mode="reduce-overhead"``). The vanilla twin is compiled the same way, so
``medexport bench --backend inductor`` compares like with like.

It is never chosen by "auto" (compiling takes a while, once per count and batch size): ``sample --backend
inductor``, ``bench --backend inductor``.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import BackendUnavailableError
from ..registry import BuildInputs, EngineBackend, RunnerInputs


class InductorBackend(EngineBackend):
    name = "inductor"
    builds_engine = False  # compiled from the bundle's models when a runner is made; nothing is kept

    def status(self) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, 'torch is not installed (pip install "medexport[build]")'
        if not hasattr(torch, "compile"):
            return False, f"torch {torch.__version__} has no torch.compile"
        return True, f"torch.compile (inductor), PyTorch {torch.__version__}"

    def key_parts(self, onnx_sha256: str, settings, options: dict) -> tuple:
        return ("inductor", onnx_sha256)

    def build(self, inputs: BuildInputs) -> tuple[list[Path], dict]:
        raise BackendUnavailableError("the inductor backend builds no engine: it compiles the bundle's models when "
                                      "it runs them (sample --backend inductor)")

    def runnable(self, record: dict, precision: str) -> tuple[bool, str]:
        ok, why = self.status()
        return (True, "yes") if ok else (False, why)

    def runner(self, inputs: RunnerInputs):
        import torch

        from .runner import CompiledRunner

        if inputs.model is None:
            raise BackendUnavailableError("the inductor backend compiles the model the engines were built from")
        device = inputs.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # the bundle's float precision; quantised graphs (ONNX Runtime int8, Q/DQ) have no PyTorch form: fp32
        precision = inputs.precision if inputs.precision in ("fp32", "fp16", "bf16") else "fp32"
        return CompiledRunner(inputs.model(), device=device, precision=precision)


def __getattr__(name: str):
    if name == "CompiledRunner":  # torch: loaded on first use
        from .runner import CompiledRunner

        return CompiledRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BACKEND = InductorBackend()
