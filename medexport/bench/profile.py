"""Where one forward's time goes, op by op: the mediator model against its vanilla twin, side by side.

``torch.profiler`` records one forward of each side after warm-up (what the caller passes: the benchmark gives a
CUDA-graph runner's eager forward, which launches the kernels its graphs replay, and a compiled runner's compiled
graph). On CUDA the rows are GPU kernels (device time per kernel name); on the CPU they are PyTorch ops (self CPU
time per ``aten::`` op). Both sides' rows are merged by name, so an op that only one model runs shows a dash on
the other side.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def op_times(forward: Callable[[], object], device: torch.device, *, warmup: int = 2) -> dict[str, tuple[float, int]]:
    """{name: (milliseconds, calls)} of one call of ``forward``: GPU kernels on CUDA, CPU ops elsewhere."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from .device import synchronize

    cuda = device.type == "cuda"
    with torch.inference_mode():
        for _ in range(warmup):
            forward()
        synchronize(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            forward()
            synchronize(device)
    rows = {}
    for e in prof.key_averages():
        if cuda:
            if e.device_type != DeviceType.CUDA:
                continue
            us = e.self_device_time_total
        else:
            us = e.self_cpu_time_total
        if us > 0:
            rows[e.key] = (us / 1e3, e.count)
    return rows


def profile_pair(
    mine: Callable[[], object], theirs: Callable[[], object], device: torch.device, *, rows: int = 15
) -> dict:
    """One forward of each side profiled; the ``rows`` largest entries (by the larger side), merged by name,
    and each side's total over all of its entries."""
    ours, base = op_times(mine, device), op_times(theirs, device)
    names = sorted(set(ours) | set(base), key=lambda k: -max(ours.get(k, (0, 0))[0], base.get(k, (0, 0))[0]))

    def side(table, name):
        ms, calls = table.get(name, (None, 0))
        return {"ms": round(ms, 4) if ms is not None else None, "calls": calls}

    return {
        "unit": "GPU kernels, device time" if device.type == "cuda" else "CPU ops, self time",
        "rows": [{"name": k, "medexport": side(ours, k), "vanilla": side(base, k)} for k in names[:rows]],
        "total_ms": {
            "medexport": round(sum(ms for ms, _ in ours.values()), 4),
            "vanilla": round(sum(ms for ms, _ in base.values()), 4),
        },
        "entries": {"medexport": len(ours), "vanilla": len(base)},
    }


__all__ = ["op_times", "profile_pair"]
