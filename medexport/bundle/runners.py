"""Runners for a bundle's engines: the one place that turns a manifest entry into a runner."""

from __future__ import annotations

from ..backend import BatchRange, OnnxrtRunner, Runner
from ..errors import BackendUnavailableError
from .manifest import Bundle


def engine_runner(bundle: Bundle, n: int, backend: str, *, shared_memory=None, device: str | None = None,
                  threads: int | None = None) -> Runner:
    """A runner for the ``backend`` engine of ``n`` mediators, after checking the file's hash."""
    entry = bundle.engine(n, backend)
    path = bundle.check_engine(n, backend)
    batch = BatchRange.parse(entry["batch"]) if entry.get("batch") else None
    if backend == "onnxruntime":
        from ..backend.onnxrt import default_providers

        single = len(entry.get("files") or [entry["file"]]) == 1  # with external data, the graph file alone
        return OnnxrtRunner(path, n, precision=entry["precision"], batch_range=batch,
                            providers=default_providers(device), threads=threads,
                            sha256=entry["sha256"] if single else None)
    if backend == "tensorrt":
        from ..backend.trt.engine import TrtRunner

        return TrtRunner(path, n, precision=entry["precision"], batch_range=batch, shared_memory=shared_memory,
                         recorded_hardware=entry.get("hardware"))
    raise BackendUnavailableError(f"unknown engine backend {backend!r} in {bundle.path}")


def runnable_here(entry: dict, backend: str) -> tuple[bool, str]:
    """Whether an engine can run on this machine, and why not."""
    if backend == "onnxruntime":
        from ..backend.onnxrt import available_providers

        missing = [p for p in entry.get("providers", []) if p not in available_providers()]
        if entry.get("precision") == "bf16" and "CUDAExecutionProvider" not in available_providers():
            return False, "bf16 needs onnxruntime-gpu"
        return (not missing, f"missing providers {missing}" if missing else "yes")
    if backend == "tensorrt":
        from ..backend.trt.engine import hardware, tensorrt_status

        ok, why = tensorrt_status()
        if not ok:
            return False, why
        here, rec = hardware(), entry.get("hardware", {})
        for key in ("tensorrt", "compute_capability"):
            if rec.get(key) != here[key]:
                return False, f"built for {key} {rec.get(key)}, here {here[key]}"
        return True, "yes"
    return False, f"unknown backend {backend}"
