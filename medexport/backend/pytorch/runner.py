"""The PyTorch backend: the reference, on CPU or CUDA; on CUDA optionally replaying one CUDA graph per batch."""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.sampling import ModelShape
from ...model import MediatorDiT
from ...model.engine_graph import TORCH_DTYPES, EngineGraph
from ..base import Runner


class TorchRunner(Runner):
    """Runs a :class:`MediatorDiT` eagerly (the reference) or through CUDA graphs.

    Args:
        model: the network (moved to ``device`` and ``precision``; the caller's copy is left alone when a
            cast is needed).
        device: "cpu" or "cuda[:i]".
        precision: "fp32" | "fp16" | "bf16" for the network's weights; inputs and outputs stay float32.
        cuda_graph: on CUDA, capture one graph per batch size on first use and replay it afterwards.
    """

    backend = "torch"

    def __init__(self, model: MediatorDiT, *, device: str = "cpu", precision: str = "fp32", cuda_graph: bool = False):
        super().__init__(
            model.config.mediators, precision=precision, device=str(device), shape=ModelShape.of(model.config)
        )
        self.model = model.cast(TORCH_DTYPES[precision], device).eval()
        self.model.refresh_constants()
        self.graph = EngineGraph(self.model, TORCH_DTYPES[precision])
        self.cuda_graph = cuda_graph and torch.device(device).type == "cuda"
        self._graphs: dict[int, tuple] = {}

    @torch.inference_mode()
    def _forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.graph(x, t, y)

    def infer(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if not self.cuda_graph:
            return self._forward(x, t, y)
        B = x.shape[0]
        if B not in self._graphs:
            self._graphs[B] = self._capture(x, t, y)
        graph, (sx, st, sy), out = self._graphs[B]
        sx.copy_(x)
        st.copy_(t)
        sy.copy_(y)
        graph.replay()
        return out.clone()

    def _capture(self, x: Tensor, t: Tensor, y: Tensor):
        static = (x.clone(), t.clone(), y.clone())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocator before capture
                self._forward(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._forward(*static)
        return graph, static, out

    def memory_bytes(self) -> int | None:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())
