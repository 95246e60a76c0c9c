"""Memory probes for benchmarks: device memory on CUDA, the process's resident set on the CPU.

The CPU peak comes from Linux's ``VmHWM``, which ``/proc/self/clear_refs`` resets between backends (psutil has
no resettable peak); elsewhere the peak since the process started.
"""

from __future__ import annotations

import resource
import sys

import torch


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the process's peak resident set (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_memory(device: torch.device) -> int:
    """Memory in use now: allocated device memory (CUDA) or the process's resident set (CPU)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_bytes("VmRSS") or 0


def peak_memory(device: torch.device) -> int:
    """Peak device memory (CUDA) or peak resident memory of the process (CPU) since the last reset."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024)


def available_memory(device: torch.device) -> int | None:
    """Memory a new allocation can take now: free device memory (CUDA) or the system's available memory (Linux's
    ``MemAvailable``); None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
