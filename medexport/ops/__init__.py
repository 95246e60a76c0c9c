"""PyTorch custom ops of medexport (registered on import, with the Triton kernel on CUDA where available)."""

from .mediator_attention import (ONNX_DOMAIN, ONNX_OP_TYPE, PLUGIN_NAMESPACE, mediator_attention,
                                 mediator_attention_reference)

from .. import kernels  # noqa: E402,F401  (registers the Triton kernel as the op's CUDA implementation)

__all__ = ["ONNX_DOMAIN", "ONNX_OP_TYPE", "PLUGIN_NAMESPACE", "mediator_attention", "mediator_attention_reference"]
