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

from ..core.precision import FLOAT_NAMES, NAMES, PRECISIONS, Precision

#: The quantised precisions (their table: :mod:`medexport.core.precision`).
QUANTIZATIONS = {n: p for n, p in PRECISIONS.items() if p.quantized}

#: Every precision a bundle can be built in: the exported float dtypes, then the quantised forms.
ALL_PRECISIONS = NAMES

#: The float precision a quantised graph is made from.
SOURCE_PRECISION = "fp32"


def quantization(precision: str) -> Precision | None:
    """The quantised precision called ``precision``, or None for a float precision."""
    return QUANTIZATIONS.get(precision)


__all__ = ["ALL_PRECISIONS", "FLOAT_NAMES", "QUANTIZATIONS", "SOURCE_PRECISION", "quantization"]
