"""A runner that calls ``torch.compile`` of the engine graph (float32 in and out, the precision inside); what it
compiles is kept in a persistent cache (:mod:`.cache`), so a second process start loads it."""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import BackendUnavailableError
from ...model import MediatorDiT
from ..pytorch.runner import TorchRunner
from .cache import use_persistent_cache


class CompiledRunner(TorchRunner):
    """:class:`TorchRunner` through TorchInductor: one compiled graph per batch size (``dynamic=False``: the
    shapes a schedule uses are few and fixed, and static shapes fuse best); on CUDA with CUDA graphs.

    What it compiles goes into inductor's persistent cache (:func:`.cache.use_persistent_cache`), from which
    a later process loads it instead of compiling again.

    Args:
        model, device, precision: as :class:`TorchRunner`.
        mode: torch.compile's mode [default: "reduce-overhead" on CUDA (CUDA graphs), "default" on the CPU].
    """

    backend = "inductor"

    def __init__(self, model: MediatorDiT, *, device: str = "cpu", precision: str = "fp32", mode: str | None = None):
        if torch.device(device).type == "cuda":
            try:
                import triton  # noqa: F401
            except ImportError:
                raise BackendUnavailableError(
                    "torch.compile generates Triton kernels on CUDA, and triton is not "
                    "installed: pip install triton, or run --backend torch (CUDA graphs "
                    "without compiling)"
                ) from None
        super().__init__(model, device=device, precision=precision)
        self.cache_dir = use_persistent_cache()
        self.mode = mode or ("reduce-overhead" if torch.device(device).type == "cuda" else "default")
        self.compiled = torch.compile(self.graph, mode=self.mode, dynamic=False, fullgraph=True)

    @torch.inference_mode()
    def _forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        out = self.compiled(x, t, y)
        # CUDA graphs reuse their output buffer at the next replay: the caller keeps its own copy
        return out.clone() if self.mode == "reduce-overhead" else out
