"""The ONNX Runtime backend: a session over an exported ONNX file (CPU, or CUDA with onnxruntime-gpu)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...errors import BackendUnavailableError, BundleError
from ..base import BatchRange, Runner

log = logging.getLogger(__name__)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def default_providers(device: str | None = None) -> list[str]:
    """CUDA first where onnxruntime-gpu and a GPU are present (unless device says cpu), then CPU."""
    avail = available_providers()
    want_cuda = device is None or str(device).startswith("cuda")
    if want_cuda and "CUDAExecutionProvider" in avail and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # constant-folding chatter on fp16 graphs is not the user's concern
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def session_from_onnx(path: str | os.PathLike, *, providers: list[str] | None = None, threads: int | None = None,
                      model_bytes: bytes | None = None):
    """An InferenceSession for ``path`` (or for ``model_bytes``, the file's content already read);
    BackendUnavailableError where the provider lacks a kernel."""
    import onnxruntime as ort

    providers = providers or default_providers()
    try:
        return ort.InferenceSession(model_bytes if model_bytes is not None else str(path),
                                    sess_options=session_options(threads), providers=providers)
    except (ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.Fail) as e:
        msg = str(e).splitlines()[0]
        hint = ""
        if "bfloat16" in msg.lower() or "(22)" in msg or "BFloat16" in msg:
            hint = (" ONNX Runtime's CPU provider has no bfloat16 kernels for this graph: build with "
                    "--precision fp32 or fp16 for ONNX Runtime on CPU, or use TensorRT / onnxruntime-gpu for bf16.")
        raise BackendUnavailableError(f"ONNX Runtime cannot run {Path(path).name} with {providers}: {msg}.{hint}") from None


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
                import hashlib

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
