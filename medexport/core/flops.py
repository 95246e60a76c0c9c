"""FLOPs (multiply-adds, the DiT/SiT "GFLOPs" convention) of one forward pass."""

from __future__ import annotations

from .config import ModelConfig


def forward_flops(cfg: ModelConfig, *, attention: str | None = None) -> int:
    """Multiply-adds of one forward of one sample; ``attention`` is "mediator" or "full" (vanilla DiT/SiT);
    default: the config's own.

    Per block: 12*N*D^2 (qkv, proj, mlp) + 6*D^2 (adaLN) + attention, full 2*N^2*D or mediator 4*n*N*D + 9*N*D
    (the 3x3 depth-wise conv). Outside the blocks: patch embedding, final layer, adaLN and timestep MLPs.
    """
    attention = attention or cfg.attention
    if attention not in ("mediator", "full"):
        raise ValueError(f"attention must be 'mediator' or 'full', got {attention!r}")
    N, D, n, p = cfg.num_tokens, cfg.hidden_size, cfg.mediators, cfg.patch_size
    mlp = 2 * cfg.mlp_ratio * N * D * D  # fc1 + fc2
    dense = 4 * N * D * D + mlp  # qkv (3) + proj (1)
    attn = 2 * N * N * D if attention == "full" else 4 * n * N * D + 9 * N * D
    block = dense + 6 * D * D + attn
    patch_embed = N * D * cfg.in_channels * p * p
    final = N * D * cfg.out_channels * p * p + 2 * D * D
    outside = patch_embed + final + D * D + 256 * D  # + timestep MLP (256*D + D*D)
    return int(cfg.depth * block + outside)


def flops_table(cfg: ModelConfig, mediators: list[int]) -> list[dict]:
    """Rows of {mediators, gflops, full_gflops, reduction_pct} for each mediator count."""
    full = forward_flops(cfg, attention="full")
    rows = []
    for n in mediators:
        f = forward_flops(cfg.with_mediators(n))
        rows.append(
            {"mediators": n, "gflops": f / 1e9, "full_gflops": full / 1e9, "reduction_pct": 100.0 * (1 - f / full)}
        )
    return rows
