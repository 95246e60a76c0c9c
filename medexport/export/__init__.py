"""PyTorch -> ONNX: one file per mediator count, with the mediator attention as one custom node."""

from .mediator_node import DOMAIN, OP_TYPE, PLUGIN_NAMESPACE, mediator_attention_function
from .onnx_export import TORCH_DTYPES, EngineGraph, ExportResult, ExportSpec, check_onnx, export_onnx
from .supported_ops import TENSORRT_ONNX_OPS, unsupported_ops

__all__ = [
    "DOMAIN",
    "OP_TYPE",
    "PLUGIN_NAMESPACE",
    "TORCH_DTYPES",
    "TENSORRT_ONNX_OPS",
    "EngineGraph",
    "ExportResult",
    "ExportSpec",
    "check_onnx",
    "export_onnx",
    "mediator_attention_function",
    "unsupported_ops",
]
