"""Timing on a device, and the device's own ceilings measured in the same run: the dense matmul rate (model FLOP
utilisation is a share of it) and the device-to-device copy bandwidth (a memory-bound kernel's share of it).

On CUDA a timed callable is captured into a CUDA graph and its replays are timed with CUDA events, so the time
is the kernels' own (no launch gaps, which a served model under CUDA graphs does not pay either); the median of
the repetitions is reported, after warm-up, on random data. On the CPU: wall time, median of the repetitions.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

#: The matmul ceiling's side (M = N = K) per device type: 8192 on a GPU (the figure vendors quote, large enough
#: for every tensor core), small on the CPU, where it only has to be honest, not long.
MATMUL_SIDE = {"cuda": 8192, "cpu": 512}
#: Bytes copied per repetition of the copy ceiling: far beyond the largest cache (an H200's L2 is 60 MB).
COPY_BYTES = {"cuda": 1 << 30, "cpu": 64 << 20}


def significant(value: float | None, digits: int = 5) -> float | None:
    """``value`` rounded to ``digits`` significant digits (rates span from a CPU's GFLOP/s to a GPU's PFLOP/s)."""
    return None if value is None else float(f"{value:.{digits}g}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fn: Callable[[], object], device: torch.device, *, reps: int = 20, warmup: int = 3, graph: bool = True
) -> float:
    """Median milliseconds of ``fn()`` on ``device``: ``warmup`` untimed calls, then ``reps`` timed ones (on
    CUDA, with ``graph``, replays of one CUDA graph of ``fn``, each between two CUDA events)."""
    device = torch.device(device)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        synchronize(device)
        if device.type != "cuda":
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        run = fn
        if graph:
            cuda_graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                fn()  # one call on the capturing stream: its allocations are made before the capture
            torch.cuda.current_stream(device).wait_stream(stream)
            with torch.cuda.graph(cuda_graph):
                fn()
            run = cuda_graph.replay
            run()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            run()
            end.record()
        torch.cuda.synchronize(device)
        return statistics.median(start.elapsed_time(end) for start, end in events)


@dataclass(frozen=True)
class Ceilings:
    """What the device can do, measured in this run.

    Attributes:
        device: where it was measured ("cuda:0", "cpu").
        matmul_dtype: the matmul's dtype (the models' compute precision: bfloat16 for a bf16 run).
        matmul_side: M = N = K of the timed matmul.
        matmul_tflops: its rate, 2 M N K / time, in TFLOP/s: the denominator of model FLOP utilisation.
        copy_bytes: bytes of the copied buffer.
        copy_gbps: device-to-device copy bandwidth, bytes read plus bytes written per second, in GB/s.
    """

    device: str
    matmul_dtype: str
    matmul_side: int
    matmul_tflops: float
    copy_bytes: int
    copy_gbps: float

    def to_dict(self) -> dict:
        return {k: significant(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


def measure_ceilings(
    device: torch.device,
    dtype: torch.dtype,
    *,
    matmul_side: int | None = None,
    copy_bytes: int | None = None,
    reps: int = 10,
) -> Ceilings:
    """The dense matmul rate in ``dtype`` and the copy bandwidth of ``device`` (random data, median of ``reps``)."""
    device = torch.device(device)
    side = matmul_side or MATMUL_SIDE[device.type]
    nbytes = copy_bytes or COPY_BYTES[device.type]
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(side, side, generator=g, device=device).to(dtype) for _ in range(2))
    ms = median_ms(lambda: a @ b, device, reps=reps, warmup=2)
    tflops = 2 * side**3 / (ms * 1e-3) / 1e12
    del a, b
    src = torch.randn(nbytes // 4, generator=g, device=device)
    dst = torch.empty_like(src)
    ms_copy = median_ms(lambda: dst.copy_(src), device, reps=reps, warmup=2)
    del src, dst
    return Ceilings(
        str(device), str(dtype).removeprefix("torch."), side, tflops, nbytes, 2 * nbytes / (ms_copy * 1e-3) / 1e9
    )


__all__ = ["COPY_BYTES", "Ceilings", "MATMUL_SIDE", "measure_ceilings", "median_ms", "significant", "synchronize"]
