"""The mediator-attention op: steps 5 and 6 of the spec as one PyTorch custom op.

``torch.ops.medexport.mediator_attention(q, k, v, m, bias_mk, bias_qm, scale) -> o``

    q, k, v   (B, H, N, d)   queries, keys, values
    m         (B, H, n, d)   mediator tokens (pooled queries)
    bias_mk   (H, n, N)      position bias of the mediator -> key scores
    bias_qm   (H, N, n)      position bias of the query -> mediator scores
    o         (B, H, N, d)

    V_m = softmax_N((m * scale) @ k^T + bias_mk) @ v          (B, H, n, d)
    o   = softmax_n((q * scale) @ m^T + bias_qm) @ V_m        (B, H, N, d)

The models call this op, so one definition serves eager PyTorch, the ONNX exporter (which translates it
into one ``MediatorAttention`` node) and device kernels registered for it (the Triton kernel on CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

# The contract between the exporter and TensorRT, written once: the ONNX node ``ONNX_DOMAIN.ONNX_OP_TYPE`` carries
# ``plugin_namespace``, and TensorRT maps it to the plugin ``PLUGIN_NAMESPACE::ONNX_OP_TYPE`` where registered.
ONNX_DOMAIN = "medexport"
ONNX_OP_TYPE = "MediatorAttention"
PLUGIN_NAMESPACE = "medexport"


def mediator_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, m: Tensor, bias_mk: Tensor, bias_qm: Tensor, scale: float
) -> Tensor:
    """Plain-PyTorch mediator attention, written as the reference computes it."""
    gather = torch.softmax((m * scale) @ k.transpose(-2, -1) + bias_mk, dim=-1)  # (B, H, n, N)
    v_m = gather @ v  # (B, H, n, d)
    read = torch.softmax((q * scale) @ m.transpose(-2, -1) + bias_qm, dim=-1)  # (B, H, N, n)
    return read @ v_m  # (B, H, N, d)


def check_shapes(q: Tensor, k: Tensor, v: Tensor, m: Tensor, bias_mk: Tensor, bias_qm: Tensor) -> None:
    """Raise ValueError unless the operands have the shapes the op documents."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must share one (B, H, N, d) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, H, N, d = q.shape
    n = m.shape[2] if m.dim() == 4 else -1
    if m.dim() != 4 or m.shape[:2] != (B, H) or m.shape[3] != d:
        raise ValueError(f"m must be (B={B}, H={H}, n, d={d}), got {tuple(m.shape)}")
    if tuple(bias_mk.shape) != (H, n, N) or tuple(bias_qm.shape) != (H, N, n):
        raise ValueError(
            f"bias_mk must be {(H, n, N)} and bias_qm {(H, N, n)}, got "
            f"{tuple(bias_mk.shape)} and {tuple(bias_qm.shape)}"
        )


@torch.library.custom_op("medexport::mediator_attention", mutates_args=())
def mediator_attention(
    q: Tensor, k: Tensor, v: Tensor, m: Tensor, bias_mk: Tensor, bias_qm: Tensor, scale: float
) -> Tensor:
    """Fused mediator attention (see the module docstring); the reference runs on every device."""
    return mediator_attention_reference(q, k, v, m, bias_mk, bias_qm, scale)


@mediator_attention.register_fake
def _(q, k, v, m, bias_mk, bias_qm, scale):
    # Contiguous whatever q's layout (q is usually a permuted view of qkv): the reference's matmul and the
    # Triton kernel both return contiguous (B, H, N, d) tensors, and torch.compile checks the strides.
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.scale = inputs[6]


def _backward(ctx, grad):
    # Gradients through the decomposed reference: training and fine-tuning keep working with the op.
    inputs = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
    with torch.enable_grad():
        out = mediator_attention_reference(*inputs, ctx.scale)
        grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    return (*grads, None)


mediator_attention.register_autograd(_backward, setup_context=_setup_context)
