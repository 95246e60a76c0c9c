"""Fused mediator attention as one Triton kernel.

    V_m = softmax_N((m * scale) @ k^T + bias_mk) @ v          (B, H, n, d)   stage 1: mediators gather
    o   = softmax_n((q * scale) @ m^T + bias_qm) @ V_m        (B, H, N, d)   stage 2: queries read

One program handles one (batch, head) pair and one share of its query tiles:

* stage 1 streams k, v and bias_mk over N in tiles of ``BLOCK_N`` keys with an online softmax (float32 running
  max, sum and accumulator), so the (n x N) score matrix only ever exists one tile at a time, in registers;
  V_m (n x d, float32) stays in registers too;
* stage 2 reads q and bias_qm in tiles of ``BLOCK_N`` queries; all n <= 128 mediators fit in one tile, so the
  (N x n) softmax is a plain one-pass softmax, and only o is written.

Nothing but the inputs and o touches global memory. The launch grid is (B * H, splits): with ``splits`` > 1,
several programs share the query tiles of one head and each repeats stage 1, trading repeated work for
parallelism when B * H alone cannot fill the GPU (unmeasured so far; the TensorRT plugin lets TensorRT time
1, 2, 4 and 8). The same kernel, compiled ahead of time by :func:`compile_kernel`, is
what the TensorRT plugin embeds (``medexport/backend/trt/plugin.py``); its runtime arguments are therefore laid
out as TensorRT's AOT plugins call kernels: input pointers, then int32 scalars, then the output pointer.

Padding: n is padded to a power of two >= 16 (``BLOCK_MED``) and d to a power of two >= 16 (``BLOCK_D``,
d = 72 -> 128), both masked; a ragged last key/query tile is masked too. 16 is the smallest extent ``tl.dot``
accepts.

This module imports triton at import time; import it through :mod:`medexport.ops.kernels`, which guards that.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..mediator_attention import check_shapes

#: The largest mediator count the kernel takes: stage 2 keeps all mediators in one tile (and V_m in registers).
MAX_MEDIATORS = 128

#: The dtypes the kernel reads (q, k, v and m share one; o has it too); accumulation is always float32.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Names of the kernel's runtime scalars, in order; the TensorRT plugin passes these as int32 extra arguments.
SCALAR_ARGS = (
    "num_heads",
    "seq_len",
    "num_mediators",
    "head_dim",
    "stride_qb",
    "stride_qh",
    "stride_qn",
    "stride_kb",
    "stride_kh",
    "stride_kn",
    "stride_vb",
    "stride_vh",
    "stride_vn",
    "stride_mb",
    "stride_mh",
    "stride_mn",
    "stride_ob",
    "stride_oh",
    "stride_on",
    "stride_bmk_h",
    "stride_bmk_m",
    "stride_bqm_h",
    "stride_bqm_n",
)

#: Softmax in base 2: exp(x) = exp2(x * log2(e)), and exp2 is the fast instruction.
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """a @ b with a float32 accumulator; UPCAST computes it in float32 (see ``upcast_dots``)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    if a.dtype == tl.float32:
        # float32 inputs mean the caller wants float32 results: no TF32 rounding on the tensor cores.
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def mediator_attention_kernel(
    # inputs (pointers)
    Q,
    K,
    V,
    M,
    BIAS_MK,
    BIAS_QM,
    # int32 scalars, in the order of SCALAR_ARGS
    num_heads,
    seq_len,
    num_mediators,
    head_dim,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_mb,
    stride_mh,
    stride_mn,
    stride_ob,
    stride_oh,
    stride_on,
    stride_bmk_h,
    stride_bmk_m,
    stride_bqm_h,
    stride_bqm_n,
    # output (pointer)
    O,
    # compile-time constants
    SCALE: tl.constexpr,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """Mediator attention for one (batch, head) and every ``splits``-th query tile; see the module docstring.

    The last dimension of q, k, v, m, o and of both biases must be contiguous (stride 1).
    """
    pid_bh = tl.program_id(0)
    pid_split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    b = (pid_bh // num_heads).to(tl.int64)  # 64-bit offsets: B*H*N*d can pass 2**31 elements
    h = (pid_bh % num_heads).to(tl.int64)

    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    m_base = M + b * stride_mb + h * stride_mh
    o_base = O + b * stride_ob + h * stride_oh
    bmk_base = BIAS_MK + h * stride_bmk_h
    bqm_base = BIAS_QM + h * stride_bqm_h

    offs_med = tl.arange(0, BLOCK_MED)  # (BLOCK_MED,) mediator index
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,) head-dim index
    offs_tile = tl.arange(0, BLOCK_N)  # (BLOCK_N,) key / query index inside a tile
    med_ok = offs_med < num_mediators  # (BLOCK_MED,)
    d_ok = offs_d < head_dim  # (BLOCK_D,)

    # Padded mediator rows and head-dim columns load as 0: they add nothing to any dot product.
    med = tl.load(
        m_base + offs_med[:, None] * stride_mn + offs_d[None, :], mask=med_ok[:, None] & d_ok[None, :], other=0.0
    )  # (BLOCK_MED, BLOCK_D)
    qk_scale: tl.constexpr = SCALE * LOG2E  # scale and log2(e) folded: scores in base 2

    # ---- stage 1: mediators gather (online softmax over N, one key tile at a time) ----
    row_max = tl.full([BLOCK_MED], float("-inf"), tl.float32)  # (BLOCK_MED,)
    row_sum = tl.zeros([BLOCK_MED], tl.float32)  # (BLOCK_MED,)
    acc = tl.zeros([BLOCK_MED, BLOCK_D], tl.float32)  # (BLOCK_MED, BLOCK_D) unnormalised V_m
    for start in range(0, seq_len, BLOCK_N):
        offs_key = start + offs_tile  # (BLOCK_N,)
        key_ok = offs_key < seq_len  # (BLOCK_N,) false on the ragged end of the last tile
        kv_mask = key_ok[:, None] & d_ok[None, :]  # (BLOCK_N, BLOCK_D)
        k = tl.load(
            k_base + offs_key[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0
        )  # (BLOCK_N, BLOCK_D)
        bias = tl.load(
            bmk_base + offs_med[:, None] * stride_bmk_m + offs_key[None, :],
            mask=med_ok[:, None] & key_ok[None, :],
            other=0.0,
        )  # (BLOCK_MED, BLOCK_N)
        s = _dot(med, tl.trans(k), UPCAST_DOTS) * qk_scale + bias.to(tl.float32) * LOG2E
        s = tl.where(key_ok[None, :], s, float("-inf"))  # (BLOCK_MED, BLOCK_N); keys past N get no weight
        # Every tile holds at least one real key, so new_max is finite (padded mediator rows score 0).
        new_max = tl.maximum(row_max, tl.max(s, axis=1))  # (BLOCK_MED,)
        alpha = tl.exp2(row_max - new_max)  # (BLOCK_MED,) rescales what was summed so far; 0 on the first tile
        p = tl.exp2(s - new_max[:, None])  # (BLOCK_MED, BLOCK_N)
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + offs_key[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0
        )  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST_DOTS)  # (BLOCK_MED, BLOCK_D)
        row_max = new_max
    # V_m rounded to the input dtype, as the reference's matmul output is: the read dot then runs at that dtype.
    v_med = (acc / row_sum[:, None]).to(med.dtype)  # (BLOCK_MED, BLOCK_D)
    med_t = tl.trans(med)  # (BLOCK_D, BLOCK_MED)

    # ---- stage 2: queries read (all mediators in one tile; this program takes every num_splits-th tile) ----
    num_tiles = tl.cdiv(seq_len, BLOCK_N)
    for tile in range(pid_split, num_tiles, num_splits):
        offs_q = tile * BLOCK_N + offs_tile  # (BLOCK_N,)
        q_ok = offs_q < seq_len  # (BLOCK_N,)
        qo_mask = q_ok[:, None] & d_ok[None, :]  # (BLOCK_N, BLOCK_D)
        q = tl.load(
            q_base + offs_q[:, None] * stride_qn + offs_d[None, :], mask=qo_mask, other=0.0
        )  # (BLOCK_N, BLOCK_D)
        bias = tl.load(
            bqm_base + offs_q[:, None] * stride_bqm_n + offs_med[None, :],
            mask=q_ok[:, None] & med_ok[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_MED)
        s = _dot(q, med_t, UPCAST_DOTS) * qk_scale + bias.to(tl.float32) * LOG2E
        s = tl.where(med_ok[None, :], s, float("-inf"))  # (BLOCK_N, BLOCK_MED); padded mediators get no weight
        p = tl.exp2(s - tl.max(s, axis=1)[:, None])  # (BLOCK_N, BLOCK_MED)
        denom = tl.sum(p, axis=1)  # (BLOCK_N,)
        o = _dot(p.to(v_med.dtype), v_med, UPCAST_DOTS) / denom[:, None]  # (BLOCK_N, BLOCK_D)
        tl.store(o_base + offs_q[:, None] * stride_on + offs_d[None, :], o.to(O.dtype.element_ty), mask=qo_mask)


# ---------------------------------------------------------------------------------------------------------
# Split-N form: stage 1 spread over chunks of keys, stage 2 over every query tile (three launches)
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def mediator_gather_chunk_kernel(
    K,
    V,
    M,
    BIAS_MK,
    num_heads,
    seq_len,
    num_mediators,
    head_dim,
    chunk_len,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_mb,
    stride_mh,
    stride_mn,
    stride_bmk_h,
    stride_bmk_m,
    PART_MAX,
    PART_SUM,
    PART_ACC,  # float32 (B*H, chunks, BLOCK_MED) x2 and (B*H, chunks, BLOCK_MED, BLOCK_D)
    SCALE: tl.constexpr,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """Stage 1 of mediator attention over one chunk of keys: the chunk's running max, sum and unnormalised V_m,
    for :func:`combine_chunks` to merge. ``chunk_len`` is a multiple of BLOCK_N and every chunk holds a key."""
    pid_bh = tl.program_id(0)
    pid_c = tl.program_id(1)
    chunks = tl.num_programs(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    m_base = M + b * stride_mb + h * stride_mh
    bmk_base = BIAS_MK + h * stride_bmk_h
    offs_med = tl.arange(0, BLOCK_MED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_tile = tl.arange(0, BLOCK_N)
    med_ok = offs_med < num_mediators
    d_ok = offs_d < head_dim
    med = tl.load(
        m_base + offs_med[:, None] * stride_mn + offs_d[None, :], mask=med_ok[:, None] & d_ok[None, :], other=0.0
    )
    qk_scale: tl.constexpr = SCALE * LOG2E
    row_max = tl.full([BLOCK_MED], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_MED], tl.float32)
    acc = tl.zeros([BLOCK_MED, BLOCK_D], tl.float32)
    first = pid_c * chunk_len
    for start in range(first, tl.minimum(first + chunk_len, seq_len), BLOCK_N):
        offs_key = start + offs_tile
        key_ok = offs_key < seq_len
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_key[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        bias = tl.load(
            bmk_base + offs_med[:, None] * stride_bmk_m + offs_key[None, :],
            mask=med_ok[:, None] & key_ok[None, :],
            other=0.0,
        )
        s = _dot(med, tl.trans(k), UPCAST_DOTS) * qk_scale + bias.to(tl.float32) * LOG2E
        s = tl.where(key_ok[None, :], s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        alpha = tl.exp2(row_max - new_max)
        p = tl.exp2(s - new_max[:, None])
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + offs_key[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST_DOTS)
        row_max = new_max
    part = (pid_bh * chunks + pid_c).to(tl.int64)
    tl.store(PART_MAX + part * BLOCK_MED + offs_med, row_max)
    tl.store(PART_SUM + part * BLOCK_MED + offs_med, row_sum)
    tl.store(PART_ACC + part * BLOCK_MED * BLOCK_D + offs_med[:, None] * BLOCK_D + offs_d[None, :], acc)


@triton.jit
def mediator_read_kernel(
    Q,
    M,
    BIAS_QM,
    VM,
    num_heads,
    seq_len,
    num_mediators,
    head_dim,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_mb,
    stride_mh,
    stride_mn,
    stride_ob,
    stride_oh,
    stride_on,
    stride_bqm_h,
    stride_bqm_n,
    O,
    SCALE: tl.constexpr,
    BLOCK_MED: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST_DOTS: tl.constexpr,
):
    """Stage 2 for one query tile, reading V_m (B*H, BLOCK_MED, BLOCK_D, at the input dtype) that stage 1 made."""
    pid_bh = tl.program_id(0)
    tile = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    offs_med = tl.arange(0, BLOCK_MED)
    offs_d = tl.arange(0, BLOCK_D)
    med_ok = offs_med < num_mediators
    d_ok = offs_d < head_dim
    med = tl.load(
        M + b * stride_mb + h * stride_mh + offs_med[:, None] * stride_mn + offs_d[None, :],
        mask=med_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    v_med = tl.load(VM + pid_bh.to(tl.int64) * BLOCK_MED * BLOCK_D + offs_med[:, None] * BLOCK_D + offs_d[None, :])
    qk_scale: tl.constexpr = SCALE * LOG2E
    offs_q = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    q_ok = offs_q < seq_len
    qo_mask = q_ok[:, None] & d_ok[None, :]
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_q[:, None] * stride_qn + offs_d[None, :], mask=qo_mask, other=0.0
    )
    bias = tl.load(
        BIAS_QM + h * stride_bqm_h + offs_q[:, None] * stride_bqm_n + offs_med[None, :],
        mask=q_ok[:, None] & med_ok[None, :],
        other=0.0,
    )
    s = _dot(q, tl.trans(med), UPCAST_DOTS) * qk_scale + bias.to(tl.float32) * LOG2E
    s = tl.where(med_ok[None, :], s, float("-inf"))
    p = tl.exp2(s - tl.max(s, axis=1)[:, None])
    denom = tl.sum(p, axis=1)
    o = _dot(p.to(v_med.dtype), v_med, UPCAST_DOTS) / denom[:, None]
    tl.store(
        O + b * stride_ob + h * stride_oh + offs_q[:, None] * stride_on + offs_d[None, :],
        o.to(O.dtype.element_ty),
        mask=qo_mask,
    )


def combine_chunks(part_max: Tensor, part_sum: Tensor, part_acc: Tensor, dtype: torch.dtype) -> Tensor:
    """V_m from the chunks' partial softmaxes (base 2): rescale each by 2^(its max - the overall max), add up,
    normalise; rounded to the input dtype as the fused kernel rounds it."""
    overall = part_max.amax(dim=1, keepdim=True)  # (BH, 1, BLOCK_MED)
    w = torch.exp2(part_max - overall)  # (BH, chunks, BLOCK_MED)
    total = (w * part_sum).sum(dim=1)  # (BH, BLOCK_MED)
    acc = (w.unsqueeze(-1) * part_acc).sum(dim=1)  # (BH, BLOCK_MED, BLOCK_D)
    return (acc / total.unsqueeze(-1)).to(dtype).contiguous()


def default_chunks(batch_heads: int, num_tiles: int, device: torch.device) -> int:
    """Chunks of keys per head for the split-N form: about two programs per SM in stage 1."""
    if device.type != "cuda":
        return min(num_tiles, 2)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(num_tiles, -(-2 * sms // max(1, batch_heads))))


def _split_n(q, k, v, m, bias_mk, bias_qm, scale, cfg, chunks) -> Tensor:
    B, H, N, d = q.shape
    n = m.shape[2]
    BH, BM, BD, BN = B * H, cfg["BLOCK_MED"], cfg["BLOCK_D"], cfg["BLOCK_N"]
    num_tiles = triton.cdiv(N, BN)
    tiles_per_chunk = triton.cdiv(num_tiles, chunks)
    chunks = triton.cdiv(num_tiles, tiles_per_chunk)  # no empty chunk
    part_max = torch.empty((BH, chunks, BM), dtype=torch.float32, device=q.device)
    part_sum = torch.empty_like(part_max)
    part_acc = torch.empty((BH, chunks, BM, BD), dtype=torch.float32, device=q.device)
    upcast = upcast_dots(q.dtype, q.device)
    mediator_gather_chunk_kernel[(BH, chunks)](
        k,
        v,
        m,
        bias_mk,
        H,
        N,
        n,
        d,
        tiles_per_chunk * BN,
        *k.stride()[:3],
        *v.stride()[:3],
        *m.stride()[:3],
        *bias_mk.stride()[:2],
        part_max,
        part_sum,
        part_acc,
        SCALE=float(scale),
        BLOCK_MED=BM,
        BLOCK_D=BD,
        BLOCK_N=BN,
        UPCAST_DOTS=upcast,
        num_warps=cfg["num_warps"],
    )
    v_med = combine_chunks(part_max, part_sum, part_acc, q.dtype)
    o = torch.empty((B, H, N, d), dtype=q.dtype, device=q.device)
    mediator_read_kernel[(BH, num_tiles)](
        q,
        m,
        bias_qm,
        v_med,
        H,
        N,
        n,
        d,
        *q.stride()[:3],
        *m.stride()[:3],
        *o.stride()[:3],
        *bias_qm.stride()[:2],
        o,
        SCALE=float(scale),
        BLOCK_MED=BM,
        BLOCK_D=BD,
        BLOCK_N=BN,
        UPCAST_DOTS=upcast,
        num_warps=cfg["num_warps"],
    )
    return o


# ---------------------------------------------------------------------------------------------------------
# Launch configuration (shared by the PyTorch path and the TensorRT plugin)
# ---------------------------------------------------------------------------------------------------------
def _pow2_at_least_16(x: int) -> int:
    return max(16, 1 << max(0, x - 1).bit_length())


def block_sizes(
    num_mediators: int, head_dim: int, seq_len: int | None = None, block_n: int | None = None
) -> dict[str, int]:
    """BLOCK_MED, BLOCK_D, BLOCK_N and num_warps for one problem size.

    ``block_n`` overrides the tile length (a power of two >= 16); by default 64, or less when N is shorter.
    """
    if not 1 <= num_mediators <= MAX_MEDIATORS:
        raise ValueError(
            f"the Triton mediator kernel takes 1 to {MAX_MEDIATORS} mediators, got {num_mediators}; "
            "torch.ops.medexport.mediator_attention takes any count (it falls back to the reference)"
        )
    if head_dim < 1:
        raise ValueError(f"head dim must be positive, got {head_dim}")
    if block_n is None:
        block_n = 64 if seq_len is None else min(64, _pow2_at_least_16(seq_len))
    elif block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
    block_med, block_d = _pow2_at_least_16(num_mediators), _pow2_at_least_16(head_dim)
    # V_m and the mediator tile live in registers for the whole program: more warps once they are large.
    num_warps = 4 if block_med * block_d <= 64 * 64 else 8
    return {"BLOCK_MED": block_med, "BLOCK_D": block_d, "BLOCK_N": block_n, "num_warps": num_warps}


def default_splits(batch_heads: int, num_tiles: int, device: torch.device) -> int:
    """How many programs share one head's query tiles: enough to fill the GPU's SMs when B * H cannot."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(num_tiles, sms // max(1, batch_heads)))


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def upcast_dots(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the dots must run in float32 rather than at the input dtype.

    Only for bfloat16 under the Triton interpreter (CPU tensors): there, ``tl.dot`` on bfloat16 operands gives
    wrong results (a known interpreter limitation), so the kernel still loads and stores bfloat16 but multiplies
    in float32. Compiled GPU kernels use bfloat16 tensor-core dots.
    """
    return dtype == torch.bfloat16 and device.type == "cpu"


# ---------------------------------------------------------------------------------------------------------
# PyTorch entry point
# ---------------------------------------------------------------------------------------------------------
def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def triton_mediator_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    m: Tensor,
    bias_mk: Tensor,
    bias_qm: Tensor,
    scale: float,
    *,
    block_n: int | None = None,
    splits: int | None = None,
    chunks: int | None = None,
) -> Tensor:
    """Mediator attention by the fused Triton kernel; same arguments and result as the op.

    q, k, v (B, H, N, d) and m (B, H, n, d) share one dtype (float32, float16 or bfloat16); the biases, (H, n, N)
    and (H, N, n), may have any floating dtype (they are read as float32). Tensors may be strided views as long
    as their last dimension is contiguous (q, k, v straight from a split qkv projection are). CUDA tensors run
    the compiled kernel; CPU tensors run only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
    triton is imported). ``block_n`` (tile length) and ``splits`` (programs per head) override the defaults.
    ``chunks`` selects the split-N form (three launches: stage 1 over that many chunks of keys per head, a merge,
    stage 2 over every query tile; 0 picks the count) instead of the fused kernel; not yet measured on a GPU,
    so the op keeps the fused kernel.

    Raises ValueError for shapes the op does not define, n > 128, unsupported dtypes, or tensors on different
    devices.
    """
    check_shapes(q, k, v, m, bias_mk, bias_qm)
    B, H, N, d = q.shape
    n = m.shape[2]
    if q.dtype not in SUPPORTED_DTYPES or any(t.dtype != q.dtype for t in (k, v, m)):
        raise ValueError(
            f"q, k, v, m must share one dtype among {[str(t) for t in SUPPORTED_DTYPES]}, got "
            f"{q.dtype}, {k.dtype}, {v.dtype}, {m.dtype}"
        )
    if not (bias_mk.is_floating_point() and bias_qm.is_floating_point()):
        raise ValueError(f"the biases must be floating point, got {bias_mk.dtype} and {bias_qm.dtype}")
    tensors = (q, k, v, m, bias_mk, bias_qm)
    if any(t.device != q.device for t in tensors):
        raise ValueError(f"all operands must be on one device, got {[str(t.device) for t in tensors]}")
    if q.device.type == "cpu" and not _interpreting():
        raise ValueError(
            "CPU tensors run the Triton kernel only under the Triton interpreter: set "
            "TRITON_INTERPRET=1 before triton is imported, or use CUDA tensors"
        )
    cfg = block_sizes(n, d, N, block_n)
    if N == 0 or B * H == 0:
        return torch.empty_like(q, memory_format=torch.contiguous_format)
    num_tiles = triton.cdiv(N, cfg["BLOCK_N"])
    if splits is None:
        splits = default_splits(B * H, num_tiles, q.device)
    elif splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")

    q, k, v, m, bias_mk, bias_qm = (_last_dim_contiguous(t) for t in tensors)
    if chunks is not None:
        if chunks < 0:
            raise ValueError(f"chunks must be >= 0 (0: the default), got {chunks}")
        with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
            return _split_n(
                q, k, v, m, bias_mk, bias_qm, scale, cfg, chunks or default_chunks(B * H, num_tiles, q.device)
            )
    o = torch.empty((B, H, N, d), dtype=q.dtype, device=q.device)  # (B, H, N, d), contiguous
    # Triton launches on the current device and its stream: make that q's device.
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        mediator_attention_kernel[(B * H, splits)](
            q,
            k,
            v,
            m,
            bias_mk,
            bias_qm,
            H,
            N,
            n,
            d,
            *q.stride()[:3],
            *k.stride()[:3],
            *v.stride()[:3],
            *m.stride()[:3],
            *o.stride()[:3],
            *bias_mk.stride()[:2],
            *bias_qm.stride()[:2],
            o,
            SCALE=float(scale),
            BLOCK_MED=cfg["BLOCK_MED"],
            BLOCK_D=cfg["BLOCK_D"],
            BLOCK_N=cfg["BLOCK_N"],
            UPCAST_DOTS=upcast_dots(q.dtype, q.device),
            num_warps=cfg["num_warps"],
        )
    return o


# ---------------------------------------------------------------------------------------------------------
# Ahead-of-time compilation (the TensorRT plugin embeds this PTX)
# ---------------------------------------------------------------------------------------------------------
_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_kernel(
    dtype: torch.dtype, num_mediators: int, head_dim: int, scale: float, *, block_n: int = 64, target=None
):
    """Compile the kernel ahead of time for contiguous tensors of ``dtype``; returns Triton's compiled kernel.

    Every runtime scalar is an int32 (the only scalar type TensorRT AOT plugins pass) and nothing is specialised
    on the values of the pointers or scalars, so one binary serves every batch size and sequence length.
    ``target`` is a ``triton.backends.compiler.GPUTarget``; by default the current GPU's. The result's
    ``asm["ptx"]``, ``metadata.name``, ``metadata.num_warps`` and ``metadata.shared`` are what a launcher needs.
    """
    if dtype not in _TRITON_DTYPES:
        raise ValueError(f"no kernel for dtype {dtype}; supported: {list(_TRITON_DTYPES)}")
    cfg = block_sizes(num_mediators, head_dim, None, block_n)
    elem = _TRITON_DTYPES[dtype]
    signature = {name: f"*{elem}" for name in ("Q", "K", "V", "M", "BIAS_MK", "BIAS_QM")}
    signature.update({name: "i32" for name in SCALAR_ARGS})
    signature["O"] = f"*{elem}"
    constexprs = {
        "SCALE": float(scale),
        "BLOCK_MED": cfg["BLOCK_MED"],
        "BLOCK_D": cfg["BLOCK_D"],
        "BLOCK_N": cfg["BLOCK_N"],
        "UPCAST_DOTS": False,
    }
    signature.update({name: "constexpr" for name in constexprs})
    src = triton.compiler.ASTSource(fn=mediator_attention_kernel, signature=signature, constexprs=constexprs)
    if target is None:
        target = triton.runtime.driver.active.get_current_target()
    return triton.compile(src, target=target, options={"num_warps": cfg["num_warps"]})


def scalar_args_for_contiguous(num_heads, seq_len, num_mediators: int, head_dim: int) -> tuple:
    """The values of SCALAR_ARGS for contiguous tensors, from the sizes alone.

    ``seq_len`` (and ``num_heads``) may be TensorRT shape expressions; every product keeps ``seq_len`` on the
    left (or multiplies ints only) so that only ``ShapeExpr * int`` and ``ShapeExpr * ShapeExpr`` are needed.
    """
    H, N, n, d = num_heads, seq_len, num_mediators, head_dim
    qkvo = ((N * d) * H, N * d, d)  # batch, head and token strides of q, k, v and o (B, H, N, d)
    med = (H * (n * d), n * d, d)  # of m (B, H, n, d)
    bmk = (N * n, N)  # head and mediator strides of bias_mk (H, n, N)
    bqm = (N * n, n)  # head and token strides of bias_qm (H, N, n)
    return (H, N, n, d, *qkvo, *qkvo, *qkvo, *med, *qkvo, *bmk, *bqm)
