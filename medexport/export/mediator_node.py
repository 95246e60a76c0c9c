"""The ``MediatorAttention`` ONNX node: how the exporter emits it and the function body it carries.

The PyTorch op ``medexport::mediator_attention`` becomes one node ``medexport.MediatorAttention`` with a float
attribute ``scale`` and a string attribute ``plugin_namespace``. TensorRT maps a node with
``plugin_namespace`` to a registered plugin of the same name; every other runtime (and TensorRT without the
plugin) runs the model-local function attached to the file, whose body is the decomposed computation.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnx import helper
from onnxscript import opset20
from onnxscript.function_libs.torch_lib.tensor_typing import TFloat

from ..ops.mediator_attention import ONNX_DOMAIN as DOMAIN
from ..ops.mediator_attention import ONNX_OP_TYPE as OP_TYPE
from ..ops.mediator_attention import PLUGIN_NAMESPACE

INPUTS = ("q", "k", "v", "m", "bias_mk", "bias_qm")

_medexport = onnxscript.values.Opset(DOMAIN, 1)


@onnxscript.script(opset=opset20, default_opset=opset20)
def translate_mediator_attention(
    q: TFloat, k: TFloat, v: TFloat, m: TFloat, bias_mk: TFloat, bias_qm: TFloat, scale: float
) -> TFloat:
    """Exporter translation of ``torch.ops.medexport.mediator_attention``: one custom-domain node."""
    return _medexport.MediatorAttention(q, k, v, m, bias_mk, bias_qm, scale=scale, plugin_namespace=PLUGIN_NAMESPACE)


def _attend(tag: str, query: str, key: str, bias: str, value: str, out: str) -> list[onnx.NodeProto]:
    """out = softmax((query * scale) @ key^T + bias) @ value, over the last axis (scale_c: the cast scale)."""
    return [
        helper.make_node("Mul", [query, "scale_c"], [f"{query}_s"]),  # (B, H, Lq, d)
        helper.make_node("Transpose", [key], [f"{key}_t"], perm=[0, 1, 3, 2]),  # (B, H, d, Lk)
        helper.make_node("MatMul", [f"{query}_s", f"{key}_t"], [f"s_{tag}"]),  # (B, H, Lq, Lk)
        helper.make_node("Add", [f"s_{tag}", bias], [f"s_{tag}_b"]),
        helper.make_node("Softmax", [f"s_{tag}_b"], [f"p_{tag}"], axis=-1),
        helper.make_node("MatMul", [f"p_{tag}", value], [out]),  # (B, H, Lq, d)
    ]


def mediator_attention_function(opset: int) -> onnx.FunctionProto:
    """The decomposed body of ``MediatorAttention`` (spec steps 5-6) as a model-local ONNX function.

    Softmax and the matmuls run in the inputs' dtype; ``scale`` (an attribute) is cast like ``q``.
    """
    scale = helper.make_node("Constant", [], ["scale_f"])
    scale.attribute.append(
        onnx.AttributeProto(name="value_float", ref_attr_name="scale", type=onnx.AttributeProto.FLOAT)
    )
    nodes = [scale, helper.make_node("CastLike", ["scale_f", "q"], ["scale_c"])]
    nodes += _attend("mk", "m", "k", "bias_mk", "v", "v_m")  # mediators gather: softmax over the N keys
    nodes += _attend("qm", "q", "m", "bias_qm", "v_m", "o")  # queries read: softmax over the n mediators
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        list(INPUTS),
        ["o"],
        nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=["scale", "plugin_namespace"],
        doc_string="Mediator attention (medexport): softmax_N((m*scale) k^T + bias_mk) v, "
        "then softmax_n((q*scale) m^T + bias_qm) of that.",
    )
