"""PyTorch custom ops of medexport: ``medexport::mediator_attention`` and its successor ``medexport::mediator_block``
(the whole block between the projections, conv included; both defined on import, as any op is) and, under
``kernels/``, its Triton kernel, registered as the op's CUDA implementation when asked
(:func:`medexport.ops.kernels.register_cuda_kernel`), never as a side effect of an import."""

from .mediator_attention import (
    ONNX_DOMAIN,
    ONNX_OP_TYPE,
    PLUGIN_NAMESPACE,
    mediator_attention,
    mediator_attention_reference,
)
from .mediator_block import mediator_block, mediator_block_reference

__all__ = [
    "ONNX_DOMAIN",
    "ONNX_OP_TYPE",
    "PLUGIN_NAMESPACE",
    "mediator_attention",
    "mediator_attention_reference",
    "mediator_block",
    "mediator_block_reference",
]
