"""Quantise an exported fp32 graph with ONNX Runtime's quantisation tools (``onnxruntime.quantization``).

Only ``MatMul``/``Gemm`` nodes of the main graph whose second input is a constant weight are quantised
(``MatMulConstBOnly``): the linear layers. ``MediatorAttention`` is a function of the graph, so its body is not
touched; normalisations, softmaxes, GELUs and embeddings stay float32.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from ..core.files import replacing
from ..errors import CalibrationError, ConfigError
from . import quantization

log = logging.getLogger(__name__)

OP_TYPES = ["MatMul", "Gemm"]
#: The linear layers that are quantised: those applied to every token, which hold nearly all the multiply-adds.
#: The conditioning path (timestep embedding, adaLN modulation: one row per image) and the final layer (the
#: velocity itself) stay float32: they cost next to nothing and are the most sensitive to rounding.
TOKEN_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def token_layer_nodes(graph) -> list[str]:
    """Names of the MatMul/Gemm nodes of :data:`TOKEN_LAYERS` (found by their weight's name)."""
    suffixes = tuple(f".{layer}.weight" for layer in TOKEN_LAYERS)
    return [n.name for n in graph.node if n.op_type in OP_TYPES and len(n.input) > 1 and n.input[1].endswith(suffixes)]


class _Reader:
    """Feeds calibration batches to ONNX Runtime's calibrator (its CalibrationDataReader interface)."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]):
        self.batches = iter(batches)

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # the interface has it; one pass is all MinMax and Distribution need
        pass


def quantize_graph(src: list[Path], dst: Path, precision: str, calibration=None) -> dict:
    """Write the ``precision`` form of the fp32 graph ``src`` (graph file, then its external data) to ``dst``.

    ``calibration``: a :class:`~medexport.quant.calibration.CountData` for the calibrated forms. Returns what the
    manifest records about the quantisation (mode, dtype, symmetric, per-channel, quantised node count).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    q = quantization(precision)
    if q is None:
        raise ConfigError(f"{precision!r} is not a quantised precision")
    if q.calibrated and calibration is None:
        raise ConfigError(f"{precision} needs calibration data")
    external = len(src) > 1  # graphs over 2 GB keep their weights in a .data file; so must the result
    graph = onnx.load(str(src[0]), load_external_data=False).graph
    nodes = token_layer_nodes(graph)
    if not nodes:
        raise ConfigError(
            f"{src[0].name} has no linear layers named like {', '.join(TOKEN_LAYERS)}: is it a medexport export?"
        )
    # Biases stay float: TensorRT reads Q/DQ only on weights and activations (it rejects int32 biases).
    options = {"MatMulConstBOnly": True, "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    with replacing(dst) as tmp, _quiet_quantizer():
        tmp_data = tmp.with_name(tmp.name + ".data")
        if q.mode == "dynamic":
            # ORT's dynamic quantiser first rewrites each Gemm as MatMul + Add, naming the MatMul "<gemm>_MatMul"
            quantize_dynamic(
                src[0],
                tmp,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=OP_TYPES,
                nodes_to_quantize=nodes + [f"{n}_MatMul" for n in nodes],
                per_channel=False,
                use_external_data_format=external,
                extra_options=options,
            )
            per_channel = False
        else:
            qtype = QuantType.QInt8 if q.quant_dtype == "int8" else QuantType.QFLOAT8E4M3FN
            # int8: min/max ranges; fp8 (no zero point, a wide dynamic range): ORT's distribution method
            method = CalibrationMethod.MinMax if q.quant_dtype == "int8" else CalibrationMethod.Distribution
            per_channel = q.quant_dtype == "int8"
            check_calibration(graph, calibration, src[0].name)
            quantize_static(
                src[0],
                tmp,
                _Reader(calibration.batches()),
                quant_format=QuantFormat.QDQ,
                activation_type=qtype,
                weight_type=qtype,
                per_channel=per_channel,
                op_types_to_quantize=OP_TYPES,
                nodes_to_quantize=nodes,
                calibrate_method=method,
                use_external_data_format=external,
                extra_options=options,
            )
        if external:  # ORT names the data file after the temporary graph: rewrite it under the final name
            data = dst.with_name(dst.name + ".data")
            model = onnx.load(str(tmp), load_external_data=True)
            data.unlink(missing_ok=True)  # onnx appends to an existing data file
            onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
            tmp_data.unlink(missing_ok=True)
        quantized = _quantized_layers(onnx.load(str(tmp), load_external_data=False).graph)
        if quantized != len(nodes):  # an ONNX Runtime that names or picks nodes differently: never ship that quietly
            raise ConfigError(
                f"ONNX Runtime's quantiser quantised {quantized} of the {len(nodes)} token layers of "
                f"{src[0].name} (onnxruntime {_ort_version()}): please report this"
            )
    files = [dst, *([dst.with_name(dst.name + ".data")] if external else [])]
    return {
        "files": files,
        "quantization": {
            "mode": q.mode,
            "dtype": q.quant_dtype,
            "symmetric": True,
            "per_channel_weights": per_channel,
            "layers": list(TOKEN_LAYERS),
            "quantized_layers": quantized,
            "tool": "onnxruntime.quantization",
        },
    }


def check_calibration(graph, calibration, name: str) -> None:
    """CalibrationError unless every row of ``calibration`` (a CountData) fits the graph's inputs: the same
    arrays, dtypes and per-row shapes (the batch dimension aside). Rows of another model would otherwise reach
    ONNX Runtime, whose error says nothing of where they came from."""
    from onnx.helper import tensor_dtype_to_np_dtype

    arrays = calibration.arrays()
    for inp in graph.input:
        a = arrays.get(inp.name)
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        want = "x".join("B" if i == 0 else str(d) if d is not None else "?" for i, d in enumerate(dims))
        fits = (
            a is not None
            and a.ndim == len(dims)
            and a.dtype == tensor_dtype_to_np_dtype(t.elem_type)
            and all(d is None or d == k for d, k in zip(dims[1:], a.shape[1:]))
        )
        if not fits:
            got = "nothing" if a is None else f"{a.dtype} {'x'.join(map(str, a.shape))}"
            raise CalibrationError(
                f"{calibration.path}: its '{inp.name}' rows ({got}) do not fit the input "
                f"'{inp.name}' of {name} ({tensor_dtype_to_np_dtype(t.elem_type)} {want}): the "
                f"data was recorded for another model; record it from a bundle of this one: "
                f"{calibration.again}"
            )


def _quantized_layers(graph) -> int:
    """Linear layers whose weight is stored quantised: MatMulInteger nodes (dynamic), or MatMul/Gemm nodes whose
    weight input comes from a DequantizeLinear of a constant (Q/DQ)."""
    weights = {i.name for i in graph.initializer}
    dq_weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    return sum(
        1
        for n in graph.node
        if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")
        or (n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in dq_weights)
    )


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantiser advises pre-processing on the root logger and prints calibration progress:
    neither is the user's concern (medexport's graphs are already shape-inferred and optimised)."""

    class _Drop(logging.Filter):
        def filter(self, record):
            return "pre-process" not in record.getMessage()

    drop = _Drop()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(drop)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
