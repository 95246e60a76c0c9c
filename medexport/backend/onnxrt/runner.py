"""The ONNX Runtime runner: a session over an exported ONNX file with the engine interface (torch tensors)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...core.batch import BatchRange
from ...core.sampling import ModelShape
from ..base import Runner
from .session import default_providers, engine_session

log = logging.getLogger(__name__)


class OnnxrtRunner(Runner):
    """Runs an ONNX Runtime session with the engine interface (torch tensors in and out)."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        mediators: int,
        *,
        precision: str = "fp32",
        batch_range: BatchRange | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
        sha256: str | None = None,
        shape: ModelShape | None = None,
    ):
        """``sha256``: the hash the file must have when the session is made; the session is then made from the
        very bytes that were hashed, so a file swapped after the bundle was opened never runs. ``shape``: the
        model's state and classes, which inputs are checked against (:class:`~medexport.backend.base.Runner`)."""
        self.providers = providers or default_providers()
        device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        super().__init__(mediators, precision=precision, device=device, batch_range=batch_range, shape=shape)
        self.path, self.threads, self.sha256 = Path(path), threads, sha256
        self.session = None

    def activate(self) -> None:
        if self.session is None:
            self.session = engine_session(self.path, sha256=self.sha256, providers=self.providers, threads=self.threads)
        super().activate()

    def deactivate(self) -> None:
        self.session = None
        super().deactivate()

    def infer(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if self.device == "cuda":
            return self._infer_io_binding(x, t, y)
        feed = {"x": _np(x, np.float32), "t": _np(t, np.float32), "y": _np(y, np.int64)}
        (v,) = self.session.run(None, feed)
        return torch.from_numpy(v)

    def _infer_io_binding(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        binding = self.session.io_binding()
        x, t, y = x.contiguous().float(), t.contiguous().float(), y.contiguous().long()
        out = torch.empty_like(x)
        for name, tensor, dtype in (("x", x, np.float32), ("t", t, np.float32), ("y", y, np.int64)):
            binding.bind_input(name, "cuda", tensor.device.index or 0, dtype, tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output("v", "cuda", out.device.index or 0, np.float32, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out


def _np(tensor: Tensor, dtype) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(dtype, copy=False)
