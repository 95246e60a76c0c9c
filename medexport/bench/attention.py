"""The attention part of one block, timed alone: what the mediator block replaces in a vanilla block.

The block's ``attn`` module runs the qkv projection, everything between the projections (the mediator block:
pooling, two attention stages, both biases, the conv of v and the residual add; in a vanilla block SDPA) and
the output projection. Its forward is timed as a whole and the two projections alone, on the same input; the
part between them is the difference, labelled as such (an estimate from two timings, not a third measurement).

Bytes the part between the projections must move: q, k, v read once and the output written once (4 B N D
values) plus, in a mediator block, both position biases (2 H n N), the pooling matrix (n N) and the conv's
weights and bias (10 D), in the model's dtype. Achieved bandwidth is a share of the measured copy bandwidth.
"""

from __future__ import annotations

import torch

from ..core.config import count_name
from .device import median_ms, significant


def attention_bytes(config, batch: int, elem: int) -> int:
    """Minimum bytes the part between the projections moves for a forward batch of ``batch``."""
    N, D, H, n = config.num_tokens, config.hidden_size, config.num_heads, config.mediators
    extra = 0 if config.is_full else 2 * H * n * N + n * N + 10 * D
    return elem * (4 * batch * N * D + extra)


def attention_row(model, batch: int, device: torch.device, copy_gbps: float | None, *, reps: int = 20) -> dict:
    """Time the first block's attention module of ``model`` (already on ``device`` in its precision) on a
    random (batch, N, D) input; the row of the attention table."""
    cfg = model.config
    attn = model.blocks[0].attn
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, cfg.num_tokens, cfg.hidden_size, generator=g, device=device).to(dtype)  # (B, N, D)
    module_ms = median_ms(lambda: attn(x), device, reps=reps)
    linears_ms = median_ms(lambda: attn.qkv(x), device, reps=reps) + median_ms(lambda: attn.proj(x), device, reps=reps)
    between_ms = module_ms - linears_ms
    nbytes = attention_bytes(cfg, batch, dtype.itemsize)
    gbps = nbytes / (between_ms * 1e-3) / 1e9 if between_ms > 0 else None
    return {
        "mediators": count_name(cfg.mediators),
        "tokens": cfg.num_tokens,
        "batch": batch,
        "module_ms": significant(module_ms),
        "linears_ms": significant(linears_ms),
        "between_ms": significant(between_ms),
        "bytes": nbytes,
        "gbps": significant(gbps),
        "copy_fraction": significant(gbps / copy_gbps) if gbps and copy_gbps else None,
    }


__all__ = ["attention_bytes", "attention_row"]
