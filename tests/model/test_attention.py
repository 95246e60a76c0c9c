"""Mediator attention against a loop-level transcription of the spec's formulas, and the pooling rule."""

import math

import pytest
import torch
import torch.nn.functional as F

from medexport.core.config import mediator_grid
from medexport.model.mediator_dit import MediatorAttention, pooling_matrix


def loop_mediator_attention(attn: MediatorAttention, x: torch.Tensor) -> torch.Tensor:
    """The spec's steps 1-8 written with explicit loops over batch, head, mediator and token (float64)."""
    x = x.double()
    B, N, D = x.shape
    H, n, G, d = attn.num_heads, attn.mediators, attn.grid, attn.head_dim
    rows, cols = mediator_grid(n)
    W = {k: v.detach().double() for k, v in attn.state_dict().items()}
    qkv = x @ W["qkv.weight"].T + W["qkv.bias"]
    q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    # 2. mediator tokens: mean of each adaptive-pooling window of q on the G x G grid
    T = torch.zeros(B, n, D, dtype=torch.float64)
    for i in range(rows):
        r0, r1 = math.floor(i * G / rows), math.ceil((i + 1) * G / rows)
        for j in range(cols):
            c0, c1 = math.floor(j * G / cols), math.ceil((j + 1) * G / cols)
            toks = [r * G + c for r in range(r0, r1) for c in range(c0, c1)]
            T[:, i * cols + j] = q[:, toks].mean(dim=1)
    # 4. biases
    an = F.interpolate(W["an_bias"], size=(G, G), mode="bilinear", align_corners=False)
    na = F.interpolate(W["na_bias"], size=(G, G), mode="bilinear", align_corners=False)
    out = torch.zeros(B, N, D, dtype=torch.float64)
    scale = d**-0.5
    for b in range(B):
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            qh, kh, vh, th = q[b, :, sl], k[b, :, sl], v[b, :, sl], T[b, :, sl]
            vt = torch.zeros(n, d, dtype=torch.float64)
            for a in range(n):  # 5. mediators gather
                s = torch.empty(N, dtype=torch.float64)
                for tok in range(N):
                    r, c = divmod(tok, G)
                    bias = an[h, a, r, c] + W["ah_bias"][0, h, a, r, 0] + W["aw_bias"][0, h, a, 0, c]
                    s[tok] = (th[a] * scale) @ kh[tok] + bias
                vt[a] = torch.softmax(s, 0) @ vh
            for tok in range(N):  # 6. queries read
                r, c = divmod(tok, G)
                s = torch.empty(n, dtype=torch.float64)
                for a in range(n):
                    bias = na[h, a, r, c] + W["ha_bias"][0, h, r, 0, a] + W["wa_bias"][0, h, 0, c, a]
                    s[a] = (qh[tok] * scale) @ th[a] + bias
                out[b, tok, sl] = torch.softmax(s, 0) @ vt
    # 7. depth-wise 3x3 conv of v, then 8. proj
    v_img = v.transpose(1, 2).reshape(B, D, G, G)
    out = out + F.conv2d(v_img, W["dwc.weight"], W["dwc.bias"], padding=1, groups=D).flatten(2).transpose(1, 2)
    return out @ W["proj.weight"].T + W["proj.bias"]


@pytest.mark.parametrize("grid,mediators", [(4, 4), (4, 8), (6, 16), (6, 32), (8, 32), (8, 6), (5, 1), (8, 64)])
def test_mediator_attention_matches_loop_reference(grid, mediators):
    torch.manual_seed(grid * 100 + mediators)
    D, H = 32, 2
    attn = MediatorAttention(D, H, grid, mediators, mediator_grid(mediators)).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(3, grid * grid, D)
    with torch.no_grad():
        got = attn(x)
    want = loop_mediator_attention(attn, x)
    rel = (got.double() - want).abs().max() / want.abs().max()
    assert rel < 1e-5, f"relative error {rel:.2e}"


@pytest.mark.parametrize("grid,side", [(8, 4), (8, 2), (6, 4), (7, 3), (16, 8), (5, 5)])
def test_square_pooling_equals_adaptive_avg_pool(grid, side):
    img = torch.randn(2, 3, grid, grid)
    want = F.adaptive_avg_pool2d(img, side).flatten(2)  # (B, C, n)
    got = (pooling_matrix(grid, side, side) @ img.flatten(2).transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("grid,n", [(8, 32), (6, 8), (7, 14)])
def test_non_square_mediator_is_mean_of_its_window(grid, n):
    rows, cols = mediator_grid(n)
    img = torch.randn(grid, grid)
    pooled = pooling_matrix(grid, rows, cols) @ img.reshape(-1)
    for i in range(rows):
        for j in range(cols):
            r0, r1 = (i * grid) // rows, -(-(i + 1) * grid // rows)
            c0, c1 = (j * grid) // cols, -(-(j + 1) * grid // cols)
            torch.testing.assert_close(pooled[i * cols + j], img[r0:r1, c0:c1].mean(), rtol=1e-6, atol=1e-6)


def test_mediator_grid_rule():
    assert mediator_grid(16) == (4, 4)
    assert mediator_grid(32) == (4, 8)
    assert mediator_grid(8) == (2, 4)
    assert mediator_grid(64) == (8, 8)
    assert mediator_grid(7) == (1, 7)
    assert mediator_grid(1) == (1, 1)


def test_bias_constants_follow_weight_changes():
    attn = MediatorAttention(32, 2, 4, 4, (2, 2)).eval()
    attn.refresh_constants()
    before = attn.bias_mk.clone()
    with torch.no_grad():
        attn.an_bias.add_(1.0)
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        attn(x)  # the forward notices the change
    torch.testing.assert_close(attn.bias_mk, before + 1.0)
    mk, qm = attn.position_biases()
    torch.testing.assert_close(attn.bias_qm, qm.detach())


def test_constants_not_recomputed_every_forward(monkeypatch):
    attn = MediatorAttention(32, 2, 4, 4, (2, 2)).eval()
    calls = []
    original = attn.position_biases
    monkeypatch.setattr(attn, "position_biases", lambda: calls.append(1) or original())
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        for _ in range(3):
            attn(x)
    assert len(calls) == 1
