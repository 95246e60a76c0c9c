"""torch.compile (TorchInductor) as a backend: it builds nothing into the bundle and compiles the PyTorch model
the engines were built from when a runner is made, fusing the block's small operations (pooling, biases,
depth-wise conv, modulation) around the mediator-attention op, whose own kernel (Triton on CUDA) it calls. On
CUDA it replays CUDA graphs (``mode="reduce-overhead"``). The vanilla twin is compiled the same way, so
``medexport bench --backend inductor`` compares like with like.

It is never chosen by "auto" (compiling takes a while, once per count and batch size): ``sample --backend
inductor``, ``bench --backend inductor``. What it compiles is kept across process starts in a persistent cache
(``inductor/`` in medexport's cache folder, ``~/.cache/medexport`` by default; ``TORCHINDUCTOR_CACHE_DIR`` where
set: :mod:`.cache`).
"""

from __future__ import annotations

from ...errors import BackendUnavailableError
from ..pytorch import PyTorchBackend
from ..registry import RunnerInputs


class InductorBackend(PyTorchBackend):
    """The PyTorch backend's model source and build rules (nothing built, the count's model run), compiled."""

    name = "inductor"
    is_reference = False

    def status(self) -> tuple[bool, str]:
        ok, why = super().status()
        if ok:
            import torch

            if not hasattr(torch, "compile"):
                return False, f"torch {torch.__version__} has no torch.compile"
            why = f"torch.compile (inductor), {why}"
        return ok, why

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
