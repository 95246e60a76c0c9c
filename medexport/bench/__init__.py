"""``medexport bench``: a mediator bundle against its vanilla twin, the full-attention engine a user would deploy
instead, built by the same exporter and backend at the same precision.

Everything is measured in one process, alternating between the engines round by round so that machine noise
hits all alike (:mod:`.compare`): images per second end to end under the schedule against the vanilla pipeline,
ms per forward of every count and of the vanilla model with the FLOPs-predicted ratio beside the measured one,
model FLOP utilisation against the matmul rate and the attention part's share of the copy bandwidth, both
ceilings measured in the same run (:mod:`.device`, :mod:`.attention`), start-up times, and on request a profile
of one forward op by op (:mod:`.profile`).

:func:`run_bench` measures a bundle pair (:mod:`.twin`), :func:`compare_pipelines` any two pipelines (models
made in memory: ``benchmarks/bench_gpu_pipeline.py``); :func:`bench_tables` turns a report into the tables both
print, :func:`plot_bench` draws it.
"""

from .compare import SHARED_FIELDS, BenchSettings, ForwardTimes, compare_pipelines, time_forwards, torch_runners
from .device import Ceilings, measure_ceilings, median_ms
from .plot import plot_bench
from .tables import TextTable, bench_tables
from .twin import check_bench_backend, check_twin, open_bundle_pipeline, run_bench

__all__ = [
    "SHARED_FIELDS",
    "BenchSettings",
    "Ceilings",
    "ForwardTimes",
    "TextTable",
    "bench_tables",
    "check_bench_backend",
    "check_twin",
    "compare_pipelines",
    "measure_ceilings",
    "median_ms",
    "open_bundle_pipeline",
    "plot_bench",
    "run_bench",
    "time_forwards",
    "torch_runners",
]
