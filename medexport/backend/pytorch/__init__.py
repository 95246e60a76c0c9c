"""The PyTorch reference as a backend: it builds nothing and runs the models the engines were built from (a
bundle's checkpoints, or its seeded random models), eagerly or, on CUDA, through CUDA graphs."""

from __future__ import annotations

from pathlib import Path

from ...errors import BackendUnavailableError
from ..registry import BuildInputs, EngineBackend, RunnerInputs


class PyTorchBackend(EngineBackend):
    name = "torch"
    builds_engine = False  # nothing is kept in the bundle: the reference runs the source models
    is_reference = True

    def status(self) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, 'torch is not installed (pip install "medexport[build]")'
        return True, f"PyTorch {torch.__version__} ({'cuda' if torch.cuda.is_available() else 'cpu'})"

    def key_parts(self, onnx_sha256: str, settings, options: dict) -> tuple:
        return (self.name, onnx_sha256)

    def build(self, inputs: BuildInputs) -> tuple[list[Path], dict]:
        raise BackendUnavailableError(
            f"the {self.name} backend builds no engine: it runs the bundle's models (sample --backend {self.name})"
        )

    def runnable(self, record: dict, precision: str) -> tuple[bool, str]:
        ok, why = self.status()
        return (True, "yes") if ok else (False, why)

    def runner(self, inputs: RunnerInputs):
        import torch

        from .runner import TorchRunner

        if inputs.model is None:
            raise BackendUnavailableError("the PyTorch reference needs the model the engines were built from")
        device = inputs.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return TorchRunner(inputs.model(), device=device)


def __getattr__(name: str):
    if name == "TorchRunner":  # torch: loaded on first use
        from .runner import TorchRunner

        return TorchRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BACKEND = PyTorchBackend()
