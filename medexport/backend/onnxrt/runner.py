"""The ONNX Runtime runner: a session over an exported ONNX file with the engine interface (torch tensors)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...core.batch import BatchRange
from ...errors import BackendUnavailableError, BundleError
from ..base import Runner
from .session import default_providers, session_from_onnx

log = logging.getLogger(__name__)


class OnnxrtRunner(Runner):
    """Runs an ONNX Runtime session with the engine interface (torch tensors in and out)."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, mediators: int, *, precision: str = "fp32",
                 batch_range: BatchRange | None = None, providers: list[str] | None = None,
                 threads: int | None = None, sha256: str | None = None):
        """``sha256``: the hash the file must have when the session is made; the session is then made from the
        very bytes that were hashed, so a file swapped after the bundle was opened never runs."""
        self.providers = providers or default_providers()
        device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        super().__init__(mediators, precision=precision, device=device, batch_range=batch_range)
        self.path, self.threads, self.sha256 = Path(path), threads, sha256
        self.session = None

    def activate(self) -> None:
        if self.session is None:
            model_bytes = None
            if self.sha256 is not None:
                try:
                    model_bytes = self.path.read_bytes()
                except OSError as e:
                    raise BundleError(f"the engine file {self.path} cannot be read ({e.strerror}): was the bundle "
                                      f"moved or deleted? Rebuild it with `medexport build`") from None
                if hashlib.sha256(model_bytes).hexdigest() != self.sha256:
                    raise BundleError(f"{self.path} changed after its bundle was opened (it no longer matches the "
                                      f"manifest's hash): rebuild it with `medexport build ... --force`")
            elif not self.path.is_file():
                raise BundleError(f"the engine file {self.path} does not exist: was the bundle moved or deleted?")
            self.session = session_from_onnx(self.path, providers=self.providers, threads=self.threads,
                                             model_bytes=model_bytes)
            names = [i.name for i in self.session.get_inputs()]
            if names != ["x", "t", "y"]:
                raise BackendUnavailableError(f"{self.path.name} has inputs {names}, expected x, t, y: "
                                              f"is it a medexport export?")
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
