"""TensorRT for RTX as a check of exported ONNX files: NVIDIA's ONNX parser and builder, no GPU needed.

TensorRT itself cannot be installed on machines without NVIDIA's package index, but TensorRT for RTX can
(``pip install 'medexport[rtx]'``: the real ``tensorrt-rtx-cu13-libs`` and ``-bindings`` wheels, 95 MB). It
shares TensorRT's ONNX parser and builds engines on a CPU-only machine, so it proves that an export parses
(every op, the ``MediatorAttention`` function bodies inlined) and that a plan can be built for its dynamic batch
range. What it does not prove: anything about Hopper (it targets compute capabilities 7.5-12.x, not 9.0), the
mediator-attention plugin (it has no ``tensorrt.plugin`` API, so it always builds the function body), speed, or
numbers (nothing is run). A plan it builds is not a TensorRT plan and is discarded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ...core.batch import BatchRange
from ...errors import BackendUnavailableError, ExportError


def rtx_status() -> tuple[bool, str]:
    """(importable, version or why not)."""
    try:
        import tensorrt_rtx_bindings as trt  # the module of the tensorrt-rtx-cu13-bindings wheel
    except ImportError as e:
        return False, f"TensorRT for RTX is not installed ({e}): pip install 'medexport[rtx]'"
    return True, f"TensorRT for RTX {trt.__version__}"


@dataclass(frozen=True)
class RtxCheck:
    """What the parser and builder made of one ONNX file."""

    path: Path
    version: str
    layers: int
    plugin_layers: int  # always 0 here: TensorRT for RTX has no plugin API, it builds the function bodies
    plan_bytes: int
    seconds: float


def parse_and_build(onnx_path: str | Path, *, batch: BatchRange, sample_shape: tuple[int, int, int]) -> RtxCheck:
    """Parse ``onnx_path`` with TensorRT for RTX and build an engine for ``batch`` (inputs x (B, *sample_shape),
    t (B,), y (B,)); ExportError naming the parser's errors when either step fails."""
    ok, why = rtx_status()
    if not ok:
        raise BackendUnavailableError(why)
    import tensorrt_rtx_bindings as trt

    start = time.perf_counter()
    # Warnings about repeated node names are expected: the shared function body's nodes get the same generated
    # names in every block where it is inlined.
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors)) or "no message"
        raise ExportError(f"TensorRT's ONNX parser (TensorRT for RTX {trt.__version__}) rejects {onnx_path}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, tail in (("x", tuple(sample_shape)), ("t", ()), ("y", ())):
        profile.set_shape(name, (batch.min, *tail), (batch.opt, *tail), (batch.max, *tail))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(
            f"TensorRT for RTX {trt.__version__} parsed {onnx_path} but could not build an engine for batch {batch}"
        )
    from .engine import count_plugin_layers

    return RtxCheck(
        Path(onnx_path),
        trt.__version__,
        network.num_layers,
        count_plugin_layers(trt, network),
        plan.nbytes,
        time.perf_counter() - start,
    )
