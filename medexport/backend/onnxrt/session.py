"""ONNX Runtime sessions for medexport's engines: providers, session options, one way to open a graph.

Torch-free: the torch runner (:mod:`.runner`), the torch-free runtime (:mod:`medexport.lite`) and the Triton
models open their sessions here, with the same options.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ...core.files import bytes_sha256
from ...errors import BackendUnavailableError, BundleError


def _gpu_present() -> bool:
    """Whether a CUDA GPU is visible: onnxruntime-gpu lists its CUDA provider on machines without one. Asks
    torch where it is loaded already (it honours CUDA_VISIBLE_DEVICES), else the NVIDIA driver's device list."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.is_available()
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def default_providers(device: str | None = None) -> list[str]:
    """CUDA first where onnxruntime-gpu and a GPU are present (unless device says cpu), then CPU."""
    avail = available_providers()
    want_cuda = device is None or str(device).startswith("cuda")
    if want_cuda and "CUDAExecutionProvider" in avail and _gpu_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # constant-folding chatter on fp16 graphs is not the user's concern
    if threads:
        opts.intra_op_num_threads = threads
    # Each session has its own intra-op thread pool. A spinning pool stays hot for the engine that runs now while
    # the next count's pool sleeps, so the first step after a switch paid for waking it (1.5-1.8x a median step
    # on the demo, 2 threads); without spinning the steps after a switch are like the others and the run is
    # no slower.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def session_from_onnx(
    path: str | os.PathLike,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    model_bytes: bytes | None = None,
):
    """An InferenceSession for ``path`` (or for ``model_bytes``, the file's content already read);
    BackendUnavailableError where the provider lacks a kernel."""
    import onnxruntime as ort

    providers = providers or default_providers()
    try:
        return ort.InferenceSession(
            model_bytes if model_bytes is not None else str(path),
            sess_options=session_options(threads),
            providers=providers,
        )
    except (ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.Fail) as e:
        msg = str(e).splitlines()[0]
        hint = ""
        if "bfloat16" in msg.lower() or "(22)" in msg or "BFloat16" in msg:
            hint = (
                " ONNX Runtime's CPU provider has no bfloat16 kernels for this graph: build with "
                "--precision fp32 or fp16 for ONNX Runtime on CPU, or use TensorRT / onnxruntime-gpu for bf16."
            )
        raise BackendUnavailableError(
            f"ONNX Runtime cannot run {Path(path).name} with {providers}: {msg}.{hint}"
        ) from None


def engine_session(
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    providers: list[str] | None = None,
    threads: int | None = None,
):
    """The session of an engine file: with ``sha256``, made from the very bytes that were hashed, so a file
    swapped after its bundle was opened never runs; its inputs must be medexport's x, t, y."""
    path = Path(path)
    model_bytes = None
    if sha256 is not None:
        try:
            model_bytes = path.read_bytes()
        except OSError as e:
            raise BundleError(
                f"the engine file {path} cannot be read ({e.strerror}): was the bundle moved or "
                f"deleted? Rebuild it with `medexport build`"
            ) from None
        if bytes_sha256(model_bytes) != sha256:
            raise BundleError(
                f"{path} changed after its bundle was opened (it no longer matches the manifest's "
                f"hash): rebuild it with `medexport build ... --force`"
            )
    elif not path.is_file():
        raise BundleError(f"the engine file {path} does not exist: was the bundle moved or deleted?")
    session = session_from_onnx(path, providers=providers, threads=threads, model_bytes=model_bytes)
    names = [i.name for i in session.get_inputs()]
    if names != ["x", "t", "y"]:
        raise BackendUnavailableError(f"{path.name} has inputs {names}, expected x, t, y: is it a medexport export?")
    return session
