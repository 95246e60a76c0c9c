"""Quantised precisions: int8 and fp8 engines made from the fp32 export with ONNX Runtime's quantisation tools.

=============  ==================================================  ===================  ==========================
precision      form                                                calibration          runs on
=============  ==================================================  ===================  ==========================
int8           dynamic: int8 weights, activations quantised at     none                 ONNX Runtime (CPU): the
               run time per tensor (MatMulInteger)                                      fastest CPU form
int8-static    static Q/DQ, symmetric (zero point 0), per-channel  ``medexport          ONNX Runtime; TensorRT
               weights: the form TensorRT consumes                 calibrate``          (int8 Q/DQ)
fp8            static Q/DQ in float8 E4M3                          ``medexport          TensorRT on GPUs with fp8
                                                                   calibrate``          (Ada, Hopper): not here
=============  ==================================================  ===================  ==========================

Only the linear layers' matrix products are quantised (``MatMul``/``Gemm`` with a constant weight): the
``MediatorAttention`` function (and its body), the normalisations, softmaxes and the timestep/label embeddings'
arithmetic stay in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.engine_graph import PRECISIONS


@dataclass(frozen=True)
class Quantization:
    precision: str
    mode: str  # "dynamic" | "static-qdq"
    dtype: str  # "int8" | "float8e4m3fn"
    calibrated: bool
    summary: str


QUANTIZATIONS = {
    "int8": Quantization("int8", "dynamic", "int8", False,
                         "dynamic int8 (int8 weights, activations quantised at run time)"),
    "int8-static": Quantization("int8-static", "static-qdq", "int8", True,
                                "static int8 Q/DQ, symmetric, per-channel weights, calibrated"),
    "fp8": Quantization("fp8", "static-qdq", "float8e4m3fn", True, "static fp8 (E4M3) Q/DQ, calibrated"),
}

#: Every precision a bundle can be built in: the exported float dtypes, then the quantised forms.
ALL_PRECISIONS = (*PRECISIONS, *QUANTIZATIONS)

#: The float precision a quantised graph is made from.
SOURCE_PRECISION = "fp32"


def quantization(precision: str) -> Quantization | None:
    """The quantisation a precision names, or None for a float precision."""
    return QUANTIZATIONS.get(precision)


__all__ = ["ALL_PRECISIONS", "QUANTIZATIONS", "SOURCE_PRECISION", "Quantization", "quantization"]
