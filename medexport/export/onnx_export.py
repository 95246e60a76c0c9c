"""Exporting one mediator model (one mediator count) to an ONNX file.

The dynamo exporter traces the model; the mediator attention arrives as one ``medexport.MediatorAttention``
node per block (see :mod:`.mediator_node`), whose function body is attached after export because the
exporter inlines the functions it makes itself. The pooling matrix and position biases are buffers computed
from the weights before export, so they are constants (initializers) of the graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import Tensor

from ..errors import ExportError
from ..model import MediatorDiT
from ..model.engine_graph import TORCH_DTYPES, EngineGraph
from .mediator_node import DOMAIN, OP_TYPE, mediator_attention_function, translate_mediator_attention
from .supported_ops import TENSORRT_MAX_OPSET, unsupported_ops

log = logging.getLogger(__name__)

#: Protobuf cannot hold more than 2 GiB; larger models keep their weights in a ``.data`` file beside the graph.
EXTERNAL_DATA_THRESHOLD = 1 << 31


@dataclass(frozen=True)
class ExportSpec:
    """How a mediator model is exported; one spec serves every mediator count.

    Attributes:
        opset: ONNX opset; None picks per precision: 20 (the lowest with GELU(tanh) as one ``Gelu`` node,
            which TensorRT and ONNX Runtime fuse) for fp32/fp16, 22 for bf16 (the first whose ``Conv`` accepts
            bfloat16). TensorRT's parser reads up to 24.
        input_names / output_names: the engine interface: x (B, C, S, S) float32, t (B,) float32, y (B,) int64
            -> v (B, C, S, S) float32, whatever the precision inside.
        max_batch: upper bound of the dynamic batch dimension seen by the exporter.
        example_batch: batch of the example inputs used for tracing (not 1, which the tracer would
            specialise).
    """

    opset: int | None = None
    input_names: tuple[str, ...] = ("x", "t", "y")
    output_names: tuple[str, ...] = ("v",)
    max_batch: int = 4096
    example_batch: int = 2

    def __post_init__(self) -> None:
        if self.opset is not None and not 20 <= self.opset <= TENSORRT_MAX_OPSET:
            raise ExportError(f"opset {self.opset} is not supported: use 20..{TENSORRT_MAX_OPSET} (or leave it unset)")

    def opset_for(self, precision: str) -> int:
        from ..core.precision import precision as precision_of

        lowest = precision_of(precision).opset
        if self.opset is not None:
            if self.opset < lowest:
                raise ExportError(f"{precision} needs opset >= {lowest} (bfloat16 Conv), got {self.opset}")
            return self.opset
        return lowest

    def example_inputs(self, model: MediatorDiT) -> tuple[Tensor, Tensor, Tensor]:
        c = model.config
        g = torch.Generator().manual_seed(0)
        B = self.example_batch
        x = torch.randn(B, c.in_channels, c.input_size, c.input_size, generator=g)
        t = torch.rand(B, generator=g)
        y = torch.randint(0, c.num_classes, (B,), generator=g)
        return x, t, y


@dataclass(frozen=True)
class ExportResult:
    path: Path
    files: tuple[Path, ...]  # the graph and, for large models, its external data file
    mediator_nodes: int
    op_counts: dict[str, int]
    seconds: float


def mediator_node_count(model_proto: onnx.ModelProto) -> int:
    return sum(1 for n in model_proto.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE)


def check_onnx(path: Path, *, expected_mediator_nodes: int | None = None) -> onnx.ModelProto:
    """Full ONNX check, one MediatorAttention node per block with its function body, only TensorRT ops."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path} fails the ONNX checker: {str(e).splitlines()[0]}") from None
    proto = onnx.load(str(path), load_external_data=False)
    nodes = mediator_node_count(proto)
    if expected_mediator_nodes is not None and nodes != expected_mediator_nodes:
        raise ExportError(f"{path} has {nodes} {OP_TYPE} nodes, expected {expected_mediator_nodes} (one per block)")
    bodies = [f for f in proto.functions if (f.domain, f.name) == (DOMAIN, OP_TYPE)]
    if nodes and len(bodies) != 1:
        raise ExportError(f"{path} lacks the {OP_TYPE} function body")
    ops = {n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx")}
    ops |= {n.op_type for f in bodies for n in f.node}
    bad = unsupported_ops(ops)
    if bad:
        raise ExportError(f"{path} uses ops TensorRT's ONNX parser does not support: {', '.join(sorted(bad))}")
    return proto


def export_onnx(
    model: MediatorDiT, path: str | os.PathLike, *, precision: str = "fp32", spec: ExportSpec = ExportSpec()
) -> ExportResult:
    """Export ``model`` to ``path`` (written under a temporary name, then renamed) and check the file."""
    if precision not in TORCH_DTYPES:
        raise ExportError(f"unknown precision {precision!r}: choose one of {', '.join(TORCH_DTYPES)}")
    path = Path(path)
    t0 = time.perf_counter()
    dtype = TORCH_DTYPES[precision]
    opset = spec.opset_for(precision)
    model = model.eval()
    work = model.cast(dtype)
    work.refresh_constants()  # biases and pooling become graph constants
    graph = EngineGraph(work, dtype).eval()
    example = spec.example_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=spec.max_batch)
    dynamic = {name: {0: batch} for name in spec.input_names}
    with warnings.catch_warnings(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph,
                example,
                dynamo=True,
                opset_version=opset,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
                custom_translation_table={torch.ops.medexport.mediator_attention.default: translate_mediator_attention},
            )
        except Exception as e:  # the exporter raises many types; keep the cause visible
            what = "the full-attention model" if model.config.is_full else f"{model.config.mediators} mediators"
            raise ExportError(f"torch.onnx.export failed for {what}: {e}") from e
    if not model.config.is_full:  # a vanilla model's attention is plain ONNX ops
        _attach_function_body(program, opset)
    model_proto_size = sum(
        v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value is not None
    )
    external = model_proto_size >= EXTERNAL_DATA_THRESHOLD - (64 << 20)
    files = _save_atomically(program, path, external)
    proto = check_onnx(path, expected_mediator_nodes=0 if model.config.is_full else model.config.depth)
    counts = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in proto.graph.node)
    seconds = time.perf_counter() - t0
    log.info(
        "exported %s (%s) to %s in %.1f s",
        "full attention" if model.config.is_full else f"{model.config.mediators} mediators",
        precision,
        path.name,
        seconds,
    )
    return ExportResult(path, files, mediator_node_count(proto), dict(counts), seconds)


@contextlib.contextmanager
def _quiet_exporter_logs():
    """The exporter logs every optional library it does not find (torchvision ops) and each pass it runs."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _attach_function_body(program, opset: int) -> None:
    import onnx_ir as ir

    fn = ir.serde.deserialize_function(mediator_attention_function(opset))
    program.model.functions[fn.identifier()] = fn
    program.model.opset_imports.setdefault(DOMAIN, 1)


def _save_atomically(program, path: Path, external: bool) -> tuple[Path, ...]:
    """Write the graph under a temporary name and rename it; the manifest, written last, vouches for it."""
    import onnx_ir as ir

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    data = path.with_name(path.name + ".data")
    try:
        if external:  # the graph refers to its data file by the final name
            ir.save(program.model, tmp, external_data=data.name)
        else:
            ir.save(program.model, tmp)
            data.unlink(missing_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return (path, data) if external else (path,)
