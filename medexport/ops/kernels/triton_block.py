"""The mediator block between its two projections (``medexport::mediator_block``) as Triton kernels.

Per (batch, head), with q, k, v read straight from the qkv projection's output (B, N, 3 D), no transposes:

    phase 0, pool     m   = pool @ q                                  (n x d)   one pass over q
    phase 1, gather   V_m = softmax_N((m * scale) @ k^T + bias_mk) @ v  (n x d)   one pass over k and v
    phase 2, read     o   = softmax_n((q * scale) @ m^T + bias_qm) @ V_m          one pass over q (a tile at a time)
                          + dwc(v) (3x3 depth-wise, zero padding, the tile's v and its neighbours' rows)
                      written once, in the token layout (B, N, D) the output projection reads

Two forms, one set of device functions (``_pool``, ``_gather``, ``_read_tile``):

* ``fused``: one launch, one program per (batch, head) running the three phases in turn. Its second read of q
  and the conv's reads of v come from L2, just read by the same program. Best when B * H fills the GPU.
* ``split``: three launches (pool and gather over chunks of tokens, each merged by a few small tensor ops, then
  the read over every query tile), so B * H * chunks programs share the work when B * H alone cannot.

Accumulation is float32 everywhere; m and V_m are rounded to the input dtype before they enter a dot, as the
reference's matmul outputs are. Padding: n to a power of two >= 16; the head dim as a power-of-two block plus,
where it is not one, a second block of 16 or more (72 -> 64 + 16, not 128: the dots do 80/72 of the work, not
128/72); masked, as a ragged last tile is.

Which form and which launch parameters run for a shape is measured on the GPU at its first use
(:mod:`medexport.ops.kernels.block_forms`). This module imports triton at import time; import it through
:mod:`medexport.ops.kernels`, which guards that.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..mediator_block import check_block_shapes, grid_side
from .triton_mediator import (
    LOG2E,
    MAX_MEDIATORS,
    SUPPORTED_DTYPES,
    _dot,
    _interpreting,
    _pow2_at_least_16,
    combine_chunks,
    upcast_dots,
)


# ---------------------------------------------------------------------------------------------------------
# Device functions: one phase each. The head dim is covered by two column blocks, [0, BLOCK_D) and, when HAS_E,
# [BLOCK_D, BLOCK_D + BLOCK_E) ("e" for extra): d = 72 is 64 + 16 (8 masked) rather than 128 (56 masked), so
# the dots do 80 / 72 of the needed work instead of 128 / 72.
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _pool(
    q_base,
    stride_n,
    pool_ptr,
    stride_pm,
    first,
    last,
    offs_med,
    med_ok,
    offs_d,
    d_ok,
    offs_e,
    e_ok,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_E: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """sum over tokens [first, last) of pool[:, t] * q[t, :], float32, as its two column blocks."""
    offs_tile = tl.arange(0, BLOCK_N)
    m_d = tl.zeros([BLOCK_MED, BLOCK_D], tl.float32)
    m_e = tl.zeros([BLOCK_MED, BLOCK_E], tl.float32)
    for start in range(first, last, BLOCK_N):
        offs = start + offs_tile  # (BLOCK_N,)
        ok = offs < last
        w = tl.load(
            pool_ptr + offs_med[:, None] * stride_pm + offs[None, :], mask=med_ok[:, None] & ok[None, :], other=0.0
        )  # (BLOCK_MED, BLOCK_N)
        q = tl.load(
            q_base + offs[:, None] * stride_n + offs_d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0
        )  # (BLOCK_N, BLOCK_D)
        w = w.to(q.dtype)
        m_d += _dot(w, q, UPCAST)
        if HAS_E:
            q_e = tl.load(
                q_base + offs[:, None] * stride_n + offs_e[None, :], mask=ok[:, None] & e_ok[None, :], other=0.0
            )  # (BLOCK_N, BLOCK_E)
            m_e += _dot(w, q_e, UPCAST)
    return m_d, m_e


@triton.jit
def _gather(
    k_base,
    v_base,
    stride_n,
    med,
    med_e,
    bmk_base,
    stride_bmk_m,
    first,
    last,
    offs_med,
    med_ok,
    offs_d,
    d_ok,
    offs_e,
    e_ok,
    qk_scale: tl.constexpr,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_E: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Online softmax of the mediators over keys [first, last) (a non-empty range): running max and sum (base 2)
    and the unnormalised V_m (two column blocks), all float32."""
    offs_tile = tl.arange(0, BLOCK_N)
    row_max = tl.full([BLOCK_MED], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_MED], tl.float32)
    acc = tl.zeros([BLOCK_MED, BLOCK_D], tl.float32)
    acc_e = tl.zeros([BLOCK_MED, BLOCK_E], tl.float32)
    for start in range(first, last, BLOCK_N):
        offs_key = start + offs_tile
        key_ok = offs_key < last
        rows = k_base + offs_key[:, None] * stride_n
        k = tl.load(rows + offs_d[None, :], mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        bias = tl.load(
            bmk_base + offs_med[:, None] * stride_bmk_m + offs_key[None, :],
            mask=med_ok[:, None] & key_ok[None, :],
            other=0.0,
        )  # (BLOCK_MED, BLOCK_N)
        s = _dot(med, tl.trans(k), UPCAST)
        if HAS_E:
            k_e = tl.load(rows + offs_e[None, :], mask=key_ok[:, None] & e_ok[None, :], other=0.0)
            s += _dot(med_e, tl.trans(k_e), UPCAST)
        s = s * qk_scale + bias.to(tl.float32) * LOG2E
        s = tl.where(key_ok[None, :], s, float("-inf"))  # keys past the range get no weight
        new_max = tl.maximum(row_max, tl.max(s, axis=1))  # finite: every tile holds a key
        alpha = tl.exp2(row_max - new_max)
        p = tl.exp2(s - new_max[:, None])
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        vrows = v_base + offs_key[:, None] * stride_n
        v = tl.load(vrows + offs_d[None, :], mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        p = p.to(v.dtype)
        acc = acc * alpha[:, None] + _dot(p, v, UPCAST)
        if HAS_E:
            v_e = tl.load(vrows + offs_e[None, :], mask=key_ok[:, None] & e_ok[None, :], other=0.0)
            acc_e = acc_e * alpha[:, None] + _dot(p, v_e, UPCAST)
        row_max = new_max
    return row_max, row_sum, acc, acc_e


@triton.jit
def _conv_store(o, offs_q, q_ok, row, col, side, v_base, stride_n, offs_c, c_ok, w_ptr, conv_bias, o_base, stride_on):
    """o (BLOCK_N, columns offs_c) plus the depth-wise 3x3 conv of v (zero padding) at those tokens and
    columns, stored: 9 shifted reads of the tile's neighbourhood, one write."""
    conv = tl.zeros_like(o) + conv_bias[None, :]
    for dy in tl.static_range(3):
        for dx in tl.static_range(3):
            r = row + (dy - 1)
            c = col + (dx - 1)
            ok = q_ok & (r >= 0) & (r < side) & (c >= 0) & (c < side)
            nb = tl.load(
                v_base + (r * side + c)[:, None] * stride_n + offs_c[None, :],
                mask=ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            w = tl.load(w_ptr + offs_c * 9 + (dy * 3 + dx), mask=c_ok, other=0.0)
            conv += nb.to(tl.float32) * w.to(tl.float32)[None, :]
    tl.store(
        o_base + offs_q[:, None] * stride_on + offs_c[None, :],
        (o + conv).to(o_base.dtype.element_ty),
        mask=q_ok[:, None] & c_ok[None, :],
    )


@triton.jit
def _read_tile(
    tile,
    q_base,
    v_base,
    stride_n,
    med_t,
    med_e_t,
    v_med,
    v_med_e,
    bqm_base,
    stride_bqm_n,
    w_ptr,
    conv_bias,
    conv_bias_e,
    o_base,
    stride_on,
    seq_len,
    side,
    offs_med,
    med_ok,
    offs_d,
    d_ok,
    offs_e,
    e_ok,
    qk_scale: tl.constexpr,
    HAS_E: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Stage 2 for one tile of queries plus the conv of v at those tokens, stored as o (one write)."""
    offs_q = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    q_ok = offs_q < seq_len
    rows = q_base + offs_q[:, None] * stride_n
    q = tl.load(rows + offs_d[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
    bias = tl.load(
        bqm_base + offs_q[:, None] * stride_bqm_n + offs_med[None, :], mask=q_ok[:, None] & med_ok[None, :], other=0.0
    )  # (BLOCK_N, BLOCK_MED)
    s = _dot(q, med_t, UPCAST)
    if HAS_E:
        q_e = tl.load(rows + offs_e[None, :], mask=q_ok[:, None] & e_ok[None, :], other=0.0)
        s += _dot(q_e, med_e_t, UPCAST)
    s = s * qk_scale + bias.to(tl.float32) * LOG2E
    s = tl.where(med_ok[None, :], s, float("-inf"))  # padded mediators get no weight
    p = tl.exp2(s - tl.max(s, axis=1)[:, None])
    inv = 1.0 / tl.sum(p, axis=1)
    p = p.to(v_med.dtype)
    row = offs_q // side
    col = offs_q % side
    o = _dot(p, v_med, UPCAST) * inv[:, None]  # (BLOCK_N, BLOCK_D) float32
    _conv_store(o, offs_q, q_ok, row, col, side, v_base, stride_n, offs_d, d_ok, w_ptr, conv_bias, o_base, stride_on)
    if HAS_E:
        o_e = _dot(p, v_med_e, UPCAST) * inv[:, None]
        _conv_store(
            o_e, offs_q, q_ok, row, col, side, v_base, stride_n, offs_e, e_ok, w_ptr, conv_bias_e, o_base, stride_on
        )


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def mediator_block_kernel(
    QKV,
    POOL,
    BIAS_MK,
    BIAS_QM,
    DWC_W,
    DWC_B,
    O,
    num_heads,
    seq_len,
    side,
    num_mediators,
    head_dim,
    stride_xb,
    stride_xn,
    stride_pm,
    stride_bmk_h,
    stride_bmk_m,
    stride_bqm_h,
    stride_bqm_n,
    stride_ob,
    stride_on,
    SCALE: tl.constexpr,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_E: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """The ``fused`` form: one program per (batch, head) runs pool, gather and read in turn."""
    pid = tl.program_id(0)
    b = (pid // num_heads).to(tl.int64)  # 64-bit offsets: B*N*3D can pass 2**31 elements
    h = (pid % num_heads).to(tl.int64)
    hidden = num_heads * head_dim
    q_base = QKV + b * stride_xb + h * head_dim
    k_base = q_base + hidden
    v_base = q_base + 2 * hidden
    offs_med = tl.arange(0, BLOCK_MED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = BLOCK_D + tl.arange(0, BLOCK_E)
    med_ok = offs_med < num_mediators
    d_ok = offs_d < head_dim
    e_ok = offs_e < head_dim
    qk_scale: tl.constexpr = SCALE * LOG2E
    dtype = QKV.dtype.element_ty

    m_d, m_e = _pool(
        q_base,
        stride_xn,
        POOL,
        stride_pm,
        0,
        seq_len,
        offs_med,
        med_ok,
        offs_d,
        d_ok,
        offs_e,
        e_ok,
        BLOCK_MED,
        BLOCK_D,
        BLOCK_E,
        HAS_E,
        BLOCK_N,
        UPCAST_DOTS,
    )
    med, med_e = m_d.to(dtype), m_e.to(dtype)  # rounded as the reference's matmul output
    row_max, row_sum, acc, acc_e = _gather(
        k_base,
        v_base,
        stride_xn,
        med,
        med_e,
        BIAS_MK + h * stride_bmk_h,
        stride_bmk_m,
        0,
        seq_len,
        offs_med,
        med_ok,
        offs_d,
        d_ok,
        offs_e,
        e_ok,
        qk_scale,
        BLOCK_MED,
        BLOCK_D,
        BLOCK_E,
        HAS_E,
        BLOCK_N,
        UPCAST_DOTS,
    )
    v_med = (acc / row_sum[:, None]).to(dtype)
    v_med_e = (acc_e / row_sum[:, None]).to(dtype)
    med_t, med_e_t = tl.trans(med), tl.trans(med_e)
    ch = h * head_dim
    conv_bias = tl.load(DWC_B + ch + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    conv_bias_e = tl.load(DWC_B + ch + offs_e, mask=e_ok, other=0.0).to(tl.float32)
    for tile in range(0, tl.cdiv(seq_len, BLOCK_N)):
        _read_tile(
            tile,
            q_base,
            v_base,
            stride_xn,
            med_t,
            med_e_t,
            v_med,
            v_med_e,
            BIAS_QM + h * stride_bqm_h,
            stride_bqm_n,
            DWC_W + ch * 9,
            conv_bias,
            conv_bias_e,
            O + b * stride_ob + ch,
            stride_on,
            seq_len,
            side,
            offs_med,
            med_ok,
            offs_d,
            d_ok,
            offs_e,
            e_ok,
            qk_scale,
            HAS_E,
            BLOCK_N,
            UPCAST_DOTS,
        )


@triton.jit
def block_pool_chunk_kernel(
    QKV,
    POOL,
    PART_M,  # PART_M: float32 (B*H, chunks, BLOCK_MED, BLOCK_W), BLOCK_W = BLOCK_D (+ BLOCK_E)
    num_heads,
    seq_len,
    num_mediators,
    head_dim,
    chunk_len,
    stride_xb,
    stride_xn,
    stride_pm,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_E: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """``split`` form, launch 1: pool @ q over one chunk of tokens."""
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = (pid // num_heads).to(tl.int64)
    h = (pid % num_heads).to(tl.int64)
    offs_med = tl.arange(0, BLOCK_MED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = BLOCK_D + tl.arange(0, BLOCK_E)
    first = pid_c * chunk_len
    m_d, m_e = _pool(
        QKV + b * stride_xb + h * head_dim,
        stride_xn,
        POOL,
        stride_pm,
        first,
        tl.minimum(first + chunk_len, seq_len),
        offs_med,
        offs_med < num_mediators,
        offs_d,
        offs_d < head_dim,
        offs_e,
        offs_e < head_dim,
        BLOCK_MED,
        BLOCK_D,
        BLOCK_E,
        HAS_E,
        BLOCK_N,
        UPCAST_DOTS,
    )
    base = PART_M + (pid * tl.num_programs(1) + pid_c).to(tl.int64) * BLOCK_MED * BLOCK_W + offs_med[:, None] * BLOCK_W
    tl.store(base + offs_d[None, :], m_d)
    if HAS_E:
        tl.store(base + offs_e[None, :], m_e)


@triton.jit
def block_gather_chunk_kernel(
    QKV,
    M,
    BIAS_MK,
    PART_MAX,
    PART_SUM,
    PART_ACC,  # M: (B*H, BLOCK_MED, BLOCK_W) at the input dtype, padded
    num_heads,
    seq_len,
    num_mediators,
    head_dim,
    chunk_len,
    stride_xb,
    stride_xn,
    stride_bmk_h,
    stride_bmk_m,
    SCALE: tl.constexpr,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_E: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """``split`` form, launch 2: the mediators' online softmax over one chunk of keys."""
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = (pid // num_heads).to(tl.int64)
    h = (pid % num_heads).to(tl.int64)
    hidden = num_heads * head_dim
    k_base = QKV + b * stride_xb + hidden + h * head_dim
    offs_med = tl.arange(0, BLOCK_MED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = BLOCK_D + tl.arange(0, BLOCK_E)
    mrow = M + pid.to(tl.int64) * BLOCK_MED * BLOCK_W + offs_med[:, None] * BLOCK_W
    med = tl.load(mrow + offs_d[None, :])
    med_e = tl.load(mrow + offs_e[None, :], mask=(offs_e < BLOCK_W)[None, :], other=0.0)
    first = pid_c * chunk_len
    row_max, row_sum, acc, acc_e = _gather(
        k_base,
        k_base + hidden,
        stride_xn,
        med,
        med_e,
        BIAS_MK + h * stride_bmk_h,
        stride_bmk_m,
        first,
        tl.minimum(first + chunk_len, seq_len),
        offs_med,
        offs_med < num_mediators,
        offs_d,
        offs_d < head_dim,
        offs_e,
        offs_e < head_dim,
        SCALE * LOG2E,
        BLOCK_MED,
        BLOCK_D,
        BLOCK_E,
        HAS_E,
        BLOCK_N,
        UPCAST_DOTS,
    )
    part = (pid * tl.num_programs(1) + pid_c).to(tl.int64)
    tl.store(PART_MAX + part * BLOCK_MED + offs_med, row_max)
    tl.store(PART_SUM + part * BLOCK_MED + offs_med, row_sum)
    base = PART_ACC + part * BLOCK_MED * BLOCK_W + offs_med[:, None] * BLOCK_W
    tl.store(base + offs_d[None, :], acc)
    if HAS_E:
        tl.store(base + offs_e[None, :], acc_e)


@triton.jit
def block_read_kernel(
    QKV,
    M,
    VM,
    BIAS_QM,
    DWC_W,
    DWC_B,
    O,  # M, VM: (B*H, BLOCK_MED, BLOCK_W) at the input dtype, padded
    num_heads,
    seq_len,
    side,
    num_mediators,
    head_dim,
    stride_xb,
    stride_xn,
    stride_bqm_h,
    stride_bqm_n,
    stride_ob,
    stride_on,
    SCALE: tl.constexpr,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_E: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """``split`` form, launch 3: stage 2 and the conv for one tile of queries."""
    pid = tl.program_id(0)
    tile = tl.program_id(1)
    b = (pid // num_heads).to(tl.int64)
    h = (pid % num_heads).to(tl.int64)
    hidden = num_heads * head_dim
    q_base = QKV + b * stride_xb + h * head_dim
    offs_med = tl.arange(0, BLOCK_MED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_e = BLOCK_D + tl.arange(0, BLOCK_E)
    d_ok = offs_d < head_dim
    e_ok = offs_e < head_dim
    w_ok = (offs_e < BLOCK_W)[None, :]
    row = pid.to(tl.int64) * BLOCK_MED * BLOCK_W + offs_med[:, None] * BLOCK_W
    med_t = tl.trans(tl.load(M + row + offs_d[None, :]))
    med_e_t = tl.trans(tl.load(M + row + offs_e[None, :], mask=w_ok, other=0.0))
    v_med = tl.load(VM + row + offs_d[None, :])
    v_med_e = tl.load(VM + row + offs_e[None, :], mask=w_ok, other=0.0)
    ch = h * head_dim
    conv_bias = tl.load(DWC_B + ch + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    conv_bias_e = tl.load(DWC_B + ch + offs_e, mask=e_ok, other=0.0).to(tl.float32)
    _read_tile(
        tile,
        q_base,
        q_base + 2 * hidden,
        stride_xn,
        med_t,
        med_e_t,
        v_med,
        v_med_e,
        BIAS_QM + h * stride_bqm_h,
        stride_bqm_n,
        DWC_W + ch * 9,
        conv_bias,
        conv_bias_e,
        O + b * stride_ob + ch,
        stride_on,
        seq_len,
        side,
        offs_med,
        offs_med < num_mediators,
        offs_d,
        d_ok,
        offs_e,
        e_ok,
        SCALE * LOG2E,
        HAS_E,
        BLOCK_N,
        UPCAST_DOTS,
    )


# ---------------------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------------------
FORMS = ("fused", "split")

#: The largest head dim the kernels take: a (BLOCK_N, d) tile and the conv's accumulator live in registers.
MAX_HEAD_DIM = 256


def check_supported(
    qkv: Tensor, pool: Tensor, bias_mk: Tensor, bias_qm: Tensor, dwc_weight: Tensor, dwc_bias: Tensor, num_heads: int
) -> tuple[int, int, int, int, int]:
    """(B, N, D, n, d) when the kernels take these operands; ValueError saying why not otherwise (the op then
    runs its reference)."""
    B, N, D, n, d = check_block_shapes(qkv, pool, bias_mk, bias_qm, dwc_weight, dwc_bias, num_heads)
    if not 1 <= n <= MAX_MEDIATORS:
        raise ValueError(f"the Triton mediator block takes 1 to {MAX_MEDIATORS} mediators, got {n}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"the Triton mediator block takes head dims up to {MAX_HEAD_DIM}, got {d}")
    if qkv.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the Triton mediator block reads {[str(t) for t in SUPPORTED_DTYPES]}, got {qkv.dtype}")
    tensors = (qkv, pool, bias_mk, bias_qm, dwc_weight, dwc_bias)
    if any(not t.is_floating_point() for t in tensors):
        raise ValueError("every operand of the mediator block must be floating point")
    if any(t.device != qkv.device for t in tensors):
        raise ValueError(f"all operands must be on one device, got {[str(t.device) for t in tensors]}")
    if qkv.device.type == "cpu" and not _interpreting():
        raise ValueError(
            "CPU tensors run the Triton kernels only under the Triton interpreter: set "
            "TRITON_INTERPRET=1 before triton is imported, or use CUDA tensors"
        )
    return B, N, D, n, d


def head_dim_blocks(head_dim: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_E): the head dim as a power-of-two block plus, where it is not one, a second block of at
    least 16 (0: none). 72 -> (64, 16), 64 -> (64, 0), 40 -> (32, 16), 8 -> (16, 0)."""
    if head_dim <= 16:
        return 16, 0
    main = 1 << (head_dim.bit_length() - 1)
    rest = head_dim - main
    return main, (_pow2_at_least_16(rest) if rest else 0)


def _chunks_for(batch_heads: int, num_tiles: int, device: torch.device, chunks: int) -> int:
    if chunks > 0:
        return min(chunks, num_tiles)
    if device.type != "cuda":
        return min(num_tiles, 2)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(num_tiles, -(-2 * sms // max(1, batch_heads))))


def triton_mediator_block(
    qkv: Tensor,
    pool: Tensor,
    bias_mk: Tensor,
    bias_qm: Tensor,
    dwc_weight: Tensor,
    dwc_bias: Tensor,
    num_heads: int,
    scale: float,
    *,
    form: str = "fused",
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int | None = None,
    chunks: int = 0,
) -> Tensor:
    """The block by the Triton kernels; same operands and result as ``torch.ops.medexport.mediator_block``.

    ``form`` is "fused" (one launch) or "split" (three, ``chunks`` chunks of tokens per head, 0: enough to fill
    the GPU); ``block_n`` (a power of two >= 16), ``num_warps`` and ``num_stages`` are the launch parameters.
    qkv may be a strided view whose last dimension is contiguous. Raises ValueError for operands the kernels do
    not take (see :func:`check_supported`).
    """
    B, N, D, n, d = check_supported(qkv, pool, bias_mk, bias_qm, dwc_weight, dwc_bias, num_heads)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    H, side = num_heads, grid_side(N)
    BM = _pow2_at_least_16(n)
    BD, BE = head_dim_blocks(d)
    HAS_E = BE > 0
    BE = BE or 16  # (unused when not HAS_E: a valid extent for the code that HAS_E removes)
    BW = BD + (BE if HAS_E else 0)
    dims = {"BLOCK_MED": BM, "BLOCK_D": BD, "BLOCK_E": BE, "HAS_E": HAS_E}
    BN = min(block_n, _pow2_at_least_16(N))
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    pool = pool.contiguous()
    bias_mk, bias_qm = bias_mk.contiguous(), bias_qm.contiguous()
    w = dwc_weight.reshape(D, 9).contiguous()
    bias = dwc_bias.contiguous()
    o = torch.empty((B, N, D), dtype=qkv.dtype, device=qkv.device)
    if B == 0:
        return o
    upcast = upcast_dots(qkv.dtype, qkv.device)
    launch = {"num_warps": num_warps, **({} if num_stages is None else {"num_stages": num_stages})}
    BH = B * H
    with torch.cuda.device(qkv.device) if qkv.device.type == "cuda" else contextlib.nullcontext():
        if form == "fused":
            mediator_block_kernel[(BH,)](
                qkv,
                pool,
                bias_mk,
                bias_qm,
                w,
                bias,
                o,
                H,
                N,
                side,
                n,
                d,
                qkv.stride(0),
                qkv.stride(1),
                pool.stride(0),
                *bias_mk.stride()[:2],
                *bias_qm.stride()[:2],
                o.stride(0),
                o.stride(1),
                SCALE=float(scale),
                **dims,
                BLOCK_N=BN,
                UPCAST_DOTS=upcast,
                **launch,
            )
            return o
        num_tiles = triton.cdiv(N, BN)
        tiles_per_chunk = triton.cdiv(num_tiles, _chunks_for(BH, num_tiles, qkv.device, chunks))
        C = triton.cdiv(num_tiles, tiles_per_chunk)  # no empty chunk
        part_m = torch.empty((BH, C, BM, BW), dtype=torch.float32, device=qkv.device)
        block_pool_chunk_kernel[(BH, C)](
            qkv,
            pool,
            part_m,
            H,
            N,
            n,
            d,
            tiles_per_chunk * BN,
            qkv.stride(0),
            qkv.stride(1),
            pool.stride(0),
            **dims,
            BLOCK_W=BW,
            BLOCK_N=BN,
            UPCAST_DOTS=upcast,
            **launch,
        )
        m = part_m.sum(dim=1).to(qkv.dtype)  # (BH, BM, BW), padding rows and columns 0
        part_max = torch.empty((BH, C, BM), dtype=torch.float32, device=qkv.device)
        part_sum = torch.empty_like(part_max)
        part_acc = torch.empty_like(part_m)
        block_gather_chunk_kernel[(BH, C)](
            qkv,
            m,
            bias_mk,
            part_max,
            part_sum,
            part_acc,
            H,
            N,
            n,
            d,
            tiles_per_chunk * BN,
            qkv.stride(0),
            qkv.stride(1),
            *bias_mk.stride()[:2],
            SCALE=float(scale),
            **dims,
            BLOCK_W=BW,
            BLOCK_N=BN,
            UPCAST_DOTS=upcast,
            **launch,
        )
        # padded mediator rows have row_sum > 0 (their scores are 0 + masked bias 0), so V_m stays finite
        v_med = combine_chunks(part_max, part_sum, part_acc, qkv.dtype)
        block_read_kernel[(BH, num_tiles)](
            qkv,
            m,
            v_med,
            bias_qm,
            w,
            bias,
            o,
            H,
            N,
            side,
            n,
            d,
            qkv.stride(0),
            qkv.stride(1),
            *bias_qm.stride()[:2],
            o.stride(0),
            o.stride(1),
            SCALE=float(scale),
            **dims,
            BLOCK_W=BW,
            BLOCK_N=BN,
            UPCAST_DOTS=upcast,
            **launch,
        )
    return o


def example_operands(
    batch: int,
    tokens: int,
    mediators: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str | torch.device,
    seed: int = 0,
) -> tuple:
    """Seeded random operands of one mediator block (qkv, pool, biases, conv weights, heads, scale), for
    benchmarks and for compiling the kernels ahead of use; the mediator grid is the most square one."""
    from ...model.mediator_dit import pooling_matrix

    rows = max(r for r in range(1, int(mediators**0.5) + 1) if mediators % r == 0)
    g = torch.Generator(device=device).manual_seed(seed)
    D, G = heads * head_dim, grid_side(tokens)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    return (
        rnd(batch, tokens, 3 * D),
        pooling_matrix(G, rows, mediators // rows).to(device=device, dtype=dtype),
        rnd(heads, mediators, tokens, scale=0.5),
        rnd(heads, tokens, mediators, scale=0.5),
        rnd(D, 1, 3, 3, scale=0.2),
        rnd(D, scale=0.1),
        heads,
        head_dim**-0.5,
    )


__all__ = ["FORMS", "MAX_HEAD_DIM", "example_operands", "check_supported", "head_dim_blocks", "triton_mediator_block"]
