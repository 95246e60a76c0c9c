"""What an engine computes: the network with float32 inputs and outputs and its precision inside.

The ONNX exporter exports this module and the PyTorch backend runs it as is, so every backend has one interface.
It lives with the model (not the exporter) so that running the PyTorch reference never imports the exporter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.precision import PRECISIONS
from .mediator_dit import MediatorDiT

#: The float precisions' torch dtype of the weights inside; inputs and outputs stay float32.
TORCH_DTYPES = {n: getattr(torch, p.dtype) for n, p in PRECISIONS.items() if not p.quantized}


class EngineGraph(nn.Module):
    """The network as an engine sees it: float32 in and out, ``dtype`` inside. Exported as the ONNX graph
    and run as is by the PyTorch backend, so both have one interface.

    The timestep embedding's frequencies are computed in float32 before the cast (as in the reference).
    """

    def __init__(self, model: MediatorDiT, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.model(x.to(self.dtype), t, y).float()  # (B, C, S, S) float32
