"""The precisions a bundle can be built in, and what each implies.

=============  ==============  =========  ===================================  ============================
precision      graph dtype     tolerance  quantisation                         runs on
=============  ==============  =========  ===================================  ============================
fp32           float32         1e-4       none                                 every backend
fp16           float16         2e-2       none                                 every backend
bf16           bfloat16        2e-2       none                                 TensorRT, onnxruntime-gpu,
                                                                               PyTorch (not ONNX Runtime CPU)
int8           float32         6e-2       dynamic int8 (no calibration)        ONNX Runtime
int8-static    float32         2e-1       static int8 Q/DQ, calibrated         ONNX Runtime, TensorRT
fp8            float32         3e-1       static fp8 E4M3 Q/DQ, calibrated     TensorRT on Ada / Hopper
=============  ==============  =========  ===================================  ============================

The tolerance is the largest relative difference ``medexport verify`` accepts between an engine and the fp32
PyTorch reference. Quantised precisions are made from the fp32 export (:attr:`Precision.source`). Which machine
can run which precision is each backend's rule (``check_precision`` / ``runnable``); :attr:`Precision.backends`
is the summary people read. Nothing here imports torch: the model layer maps :attr:`Precision.dtype` to a torch
dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Precision:
    """One precision.

    Attributes:
        name: the CLI's name ("fp32", "int8-static", ...).
        dtype: the float dtype inside the exported graph: "float32", "float16" or "bfloat16".
        tolerance: the largest relative difference from the fp32 reference that verification accepts.
        mode: None for a float precision; "dynamic" or "static-qdq" for a quantised one.
        quant_dtype: the quantised type ("int8", "float8e4m3fn"), None for a float precision.
        calibrated: whether it is calibrated on recorded engine inputs (``medexport calibrate``).
        backends: the backends that can run it (where the machine allows: see each backend's rule).
        summary: one line for people.
        opset: the lowest ONNX opset its graph can be exported at (bfloat16 Conv needs 22).
    """

    name: str
    dtype: str
    tolerance: float
    mode: str | None = None
    quant_dtype: str | None = None
    calibrated: bool = False
    backends: tuple[str, ...] = ("onnxruntime", "tensorrt", "torch")
    summary: str = ""
    opset: int = 20

    @property
    def quantized(self) -> bool:
        return self.mode is not None

    @property
    def source(self) -> str:
        """The precision exported from PyTorch, and the one its PyTorch model runs at: itself, or fp32 for a
        quantised precision (a Q/DQ graph has no PyTorch form)."""
        return "fp32" if self.quantized else self.name


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "float32", 1e-4, summary="float32"),
        Precision("fp16", "float16", 2e-2, summary="float16 weights and activations"),
        Precision(
            "bf16",
            "bfloat16",
            2e-2,
            backends=("tensorrt", "onnxruntime-gpu", "torch"),
            summary="bfloat16 weights and activations",
            opset=22,
        ),
        Precision(
            "int8",
            "float32",
            6e-2,
            "dynamic",
            "int8",
            backends=("onnxruntime",),
            summary="dynamic int8 (int8 weights, activations quantised at run time)",
        ),
        Precision(
            "int8-static",
            "float32",
            2e-1,
            "static-qdq",
            "int8",
            calibrated=True,
            backends=("onnxruntime", "tensorrt"),
            summary="static int8 Q/DQ, symmetric, per-channel weights, calibrated",
        ),
        Precision(
            "fp8",
            "float32",
            3e-1,
            "static-qdq",
            "float8e4m3fn",
            calibrated=True,
            backends=("tensorrt",),
            summary="static fp8 (E4M3) Q/DQ, calibrated",
        ),
    )
}

#: Every precision's name, float precisions first: the CLI's choices.
NAMES = tuple(PRECISIONS)
#: The precisions exported from PyTorch as they are (the others are quantised from fp32).
FLOAT_NAMES = tuple(n for n, p in PRECISIONS.items() if not p.quantized)


def precision(name: str) -> Precision:
    """The precision called ``name``; ConfigError naming the choices for an unknown one."""
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown precision {name!r}: choose one of {', '.join(NAMES)}") from None
