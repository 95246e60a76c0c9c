"""The mediator block between its two projections as one PyTorch custom op.

``torch.ops.medexport.mediator_block(qkv, pool, bias_mk, bias_qm, dwc_weight, dwc_bias, num_heads, scale) -> o``

    qkv         (B, N, 3 D)    the qkv projection's output as it writes it: [q | k | v], each [head0 .. headH-1]
    pool        (n, N)         adaptive average pooling of the token grid onto the mediator grid
    bias_mk     (H, n, N)      position bias of the mediator -> key scores
    bias_qm     (H, N, n)      position bias of the query -> mediator scores
    dwc_weight  (D, 1, 3, 3)   the depth-wise 3x3 conv of v in image layout (channel h * d + j)
    dwc_bias    (D,)
    o           (B, N, D)      what the output projection reads

    m   = pool @ q                                  (B, H, n, d)  mediators: pooled queries
    o_a = mediator_attention(q, k, v, m, ...)       (B, H, N, d)  the op of ``mediator_attention.py``
    o   = o_a in token layout + dwc(v in image layout) in token layout

This is the successor of ``medexport::mediator_attention`` that includes the pooling and the conv. Its reference
(:func:`mediator_block_reference`) is exactly what :class:`~medexport.model.mediator_dit.MediatorAttention` computed
before the op existed, through ``mediator_attention``; so on the CPU, in an ONNX export and in ONNX Runtime
nothing changes (the model calls this op only on CUDA, where the fused Triton kernels of
``kernels/triton_block.py`` read qkv once and write o once instead of the eight passes of the decomposed form).
The token grid is square (N = G * G), as the model's is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .mediator_attention import mediator_attention


def grid_side(num_tokens: int) -> int:
    """G with G * G == num_tokens; ValueError if the token grid is not square."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"the mediator block needs a square token grid, got N = {num_tokens} tokens")
    return side


def check_block_shapes(
    qkv: Tensor, pool: Tensor, bias_mk: Tensor, bias_qm: Tensor, dwc_weight: Tensor, dwc_bias: Tensor, num_heads: int
) -> tuple[int, int, int, int, int]:
    """(B, N, D, n, d) of valid operands; ValueError saying which operand is off otherwise."""
    if qkv.dim() != 3 or qkv.shape[2] % 3:
        raise ValueError(f"qkv must be (B, N, 3 D), got {tuple(qkv.shape)}")
    B, N, D3 = qkv.shape
    D = D3 // 3
    if num_heads < 1 or D % num_heads:
        raise ValueError(f"the hidden size {D} does not split into {num_heads} heads")
    grid_side(N)
    n = pool.shape[0] if pool.dim() == 2 else -1
    if pool.dim() != 2 or pool.shape[1] != N or n < 1:
        raise ValueError(f"pool must be (n, N={N}), got {tuple(pool.shape)}")
    H = num_heads
    if tuple(bias_mk.shape) != (H, n, N) or tuple(bias_qm.shape) != (H, N, n):
        raise ValueError(
            f"bias_mk must be {(H, n, N)} and bias_qm {(H, N, n)}, got {tuple(bias_mk.shape)} and "
            f"{tuple(bias_qm.shape)}"
        )
    if tuple(dwc_weight.shape) != (D, 1, 3, 3) or tuple(dwc_bias.shape) != (D,):
        raise ValueError(
            f"dwc_weight must be {(D, 1, 3, 3)} and dwc_bias {(D,)}, got {tuple(dwc_weight.shape)} "
            f"and {tuple(dwc_bias.shape)}"
        )
    return B, N, D, n, D // H


def mediator_block_reference(
    qkv: Tensor,
    pool: Tensor,
    bias_mk: Tensor,
    bias_qm: Tensor,
    dwc_weight: Tensor,
    dwc_bias: Tensor,
    num_heads: int,
    scale: float,
) -> Tensor:
    """The decomposed block: pooling, ``mediator_attention``, the conv of v and the residual add."""
    B, N, D3 = qkv.shape
    H, D = num_heads, D3 // 3
    d, G = D // H, grid_side(N)
    q, k, v = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) each
    m = pool.to(q.dtype) @ q  # (B, H, n, d): adaptive average pooling of q on the token grid
    o = mediator_attention(q, k, v, m, bias_mk.to(q.dtype), bias_qm.to(q.dtype), scale)  # (B, H, N, d)
    o = o.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
    v_img = v.transpose(2, 3).reshape(B, D, G, G)  # (B, H, d, N) -> (B, D, G, G), channel h*d + j
    conv = F.conv2d(v_img, dwc_weight.to(q.dtype), dwc_bias.to(q.dtype), padding=1, groups=D)
    return o + conv.flatten(2).transpose(1, 2)  # (B, N, D)


@torch.library.custom_op("medexport::mediator_block", mutates_args=())
def mediator_block(
    qkv: Tensor,
    pool: Tensor,
    bias_mk: Tensor,
    bias_qm: Tensor,
    dwc_weight: Tensor,
    dwc_bias: Tensor,
    num_heads: int,
    scale: float,
) -> Tensor:
    """The mediator block between its projections (see the module docstring); the reference on every device."""
    return mediator_block_reference(qkv, pool, bias_mk, bias_qm, dwc_weight, dwc_bias, num_heads, scale)


@mediator_block.register_fake
def _(qkv, pool, bias_mk, bias_qm, dwc_weight, dwc_bias, num_heads, scale):
    B, N, D3 = qkv.shape
    return qkv.new_empty((B, N, D3 // 3))  # contiguous, as every implementation returns it


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:6])
    ctx.num_heads, ctx.scale = inputs[6], inputs[7]


def _backward(ctx, grad):
    # Gradients through the decomposed reference, as for mediator_attention.
    inputs = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
    with torch.enable_grad():
        out = mediator_block_reference(*inputs, ctx.num_heads, ctx.scale)
        grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    return (*grads, None, None)


mediator_block.register_autograd(_backward, setup_context=_setup_context)
