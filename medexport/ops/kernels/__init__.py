"""Device kernels for medexport's custom ops.

* :func:`triton_mediator_attention` runs the fused Triton mediator-attention kernel directly
  (``medexport/ops/kernels/triton_mediator.py``).
* :func:`triton_mediator_block` runs the Triton kernels of the whole mediator block between its projections
  (``medexport/ops/kernels/triton_block.py``).
* :func:`register_cuda_kernel` makes them the CUDA implementations of ``torch.ops.medexport.mediator_attention``
  and ``torch.ops.medexport.mediator_block`` (the block's form and launch measured per shape at first use:
  ``block_forms.py``). Nothing does it as a side effect of an import: the PyTorch runner
  and :meth:`MediatorDiT.cast` call it when a model is put on a CUDA device.

Triton is optional: importing this package never imports it, and the functions that need it raise
:class:`~medexport.errors.BackendUnavailableError` when it is missing.
"""

from __future__ import annotations

import logging

from torch import Tensor

from ...errors import BackendUnavailableError

log = logging.getLogger(__name__)

__all__ = [
    "register_cuda_kernel",
    "registered_cuda_kernel",
    "triton_available",
    "triton_mediator_attention",
    "triton_mediator_block",
]

#: Which implementation register_cuda_kernel installed: None (not yet), "triton" or "reference".
_cuda_kernel: str | None = None


def triton_available() -> tuple[bool, str]:
    """(True, "") when triton imports, else (False, why not)."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not installed ({exc}); install it with: pip install 'medexport[triton]'"
    return True, ""


def _kernel_module():
    """The Triton kernel module, imported on first use."""
    ok, why = triton_available()
    if not ok:
        raise BackendUnavailableError(f"The Triton mediator-attention kernel needs triton: {why}")
    from . import triton_mediator

    return triton_mediator


def triton_mediator_attention(
    q: Tensor, k: Tensor, v: Tensor, m: Tensor, bias_mk: Tensor, bias_qm: Tensor, scale: float, **launch
) -> Tensor:
    """Mediator attention by the fused Triton kernel, called directly (not through the op).

    Same arguments and result as ``torch.ops.medexport.mediator_attention``: q, k, v (B, H, N, d), m (B, H, n, d),
    bias_mk (H, n, N), bias_qm (H, N, n) -> o (B, H, N, d). CUDA tensors, or CPU tensors under the Triton
    interpreter (``TRITON_INTERPRET=1`` set before triton is imported). ``launch`` takes the keyword overrides of
    :func:`medexport.ops.kernels.triton_mediator.triton_mediator_attention` (``block_n``, ``splits``).
    Raises ValueError for bad shapes, n > 128 or unsupported dtypes; BackendUnavailableError without triton.
    """
    return _kernel_module().triton_mediator_attention(q, k, v, m, bias_mk, bias_qm, scale, **launch)


def triton_mediator_block(
    qkv: Tensor,
    pool: Tensor,
    bias_mk: Tensor,
    bias_qm: Tensor,
    dwc_weight: Tensor,
    dwc_bias: Tensor,
    num_heads: int,
    scale: float,
    **launch,
) -> Tensor:
    """The mediator block by its Triton kernels, called directly (not through the op); same operands and result
    as ``torch.ops.medexport.mediator_block``. ``launch``: ``form`` ("fused" or "split"), ``block_n``,
    ``num_warps``, ``num_stages``, ``chunks``. CUDA tensors, or CPU tensors under the Triton interpreter.
    Raises ValueError for operands the kernels do not take; BackendUnavailableError without triton."""
    _kernel_module()
    from . import triton_block

    return triton_block.triton_mediator_block(
        qkv, pool, bias_mk, bias_qm, dwc_weight, dwc_bias, num_heads, scale, **launch
    )


def _cuda_block_impl(
    qkv: Tensor,
    pool: Tensor,
    bias_mk: Tensor,
    bias_qm: Tensor,
    dwc_weight: Tensor,
    dwc_bias: Tensor,
    num_heads: int,
    scale: float,
) -> Tensor:
    """The block op's CUDA implementation: the candidate measured fastest for this shape (``block_forms``), the
    reference for operands the kernels do not take."""
    import torch

    from ..mediator_block import mediator_block_reference
    from . import block_forms, triton_block

    args = (qkv, pool, bias_mk, bias_qm, dwc_weight, dwc_bias, num_heads, scale)
    pinned = block_forms.requested_form()
    try:
        triton_block.check_supported(*args[:7])
    except ValueError as e:
        if pinned in triton_block.FORMS:
            raise BackendUnavailableError(
                f"{block_forms.ENV}={pinned} asks for the Triton mediator block, which cannot run these operands "
                f"({e}); unset {block_forms.ENV} (or set it to auto) and the PyTorch reference runs them"
            ) from None
        log.debug("mediator block on CUDA runs the reference: %s", e)
        return mediator_block_reference(*args)

    def run(cand: block_forms.Candidate) -> Tensor:
        if cand.form == "reference":
            return mediator_block_reference(*args)
        return triton_block.triton_mediator_block(*args, form=cand.form, **cand.launch)

    cand = block_forms.choose(
        block_forms.shape_key(qkv, pool, num_heads),
        run,
        lambda: mediator_block_reference(*args),
        torch.cuda.is_current_stream_capturing(),
    )
    if pinned == "auto":  # (every candidate that ran was checked when it was measured)
        return run(cand)
    try:
        return run(cand)
    except Exception as e:  # a pinned kernel that cannot compile or launch here: say so and name the way out
        if isinstance(e, BackendUnavailableError):
            raise
        raise BackendUnavailableError(
            f"{block_forms.ENV}={pinned}: the Triton mediator block failed on {tuple(qkv.shape)} {qkv.dtype} "
            f"({type(e).__name__}: {str(e)[:300]}); unset {block_forms.ENV} (auto measures the forms and falls back "
            f"to the PyTorch reference) or set it to reference"
        ) from e


def _cuda_triton_impl(
    q: Tensor, k: Tensor, v: Tensor, m: Tensor, bias_mk: Tensor, bias_qm: Tensor, scale: float
) -> Tensor:
    """The op's CUDA implementation: per shape, the fastest form measured on this GPU (``forms.choose``: the
    fused kernel, its split-N form, two SDPA calls or the reference), the fused kernel where nothing was measured.

    The op is defined for any n <= N and any floating dtype; the kernel takes n <= 128 and fp32/fp16/bf16 with
    q, k, v, m of one dtype, so the rest (float64, mixed dtypes, many mediators) keeps the reference's result.
    """
    from ..mediator_attention import mediator_attention_reference
    from .forms import choose, sdpa_mediator_attention

    mod = _kernel_module()
    n = m.shape[2] if m.dim() == 4 else 0
    if (
        1 <= n <= mod.MAX_MEDIATORS
        and q.dtype in mod.SUPPORTED_DTYPES
        and all(t.dtype == q.dtype for t in (k, v, m))
        and bias_mk.is_floating_point()
        and bias_qm.is_floating_point()
    ):
        form = choose(q, m)
        if form == "sdpa":
            return sdpa_mediator_attention(q, k, v, m, bias_mk, bias_qm, scale)
        if form == "reference":  # (the kernel reads biases of any float dtype; matmuls need q's)
            return mediator_attention_reference(q, k, v, m, bias_mk.to(q.dtype), bias_qm.to(q.dtype), scale)
        return mod.triton_mediator_attention(
            q, k, v, m, bias_mk, bias_qm, scale, **({"chunks": 0} if form == "split" else {})
        )
    return mediator_attention_reference(q, k, v, m, bias_mk, bias_qm, scale)


def _cuda_reference_impl(
    q: Tensor, k: Tensor, v: Tensor, m: Tensor, bias_mk: Tensor, bias_qm: Tensor, scale: float
) -> Tensor:
    from ..mediator_attention import mediator_attention_reference

    return mediator_attention_reference(q, k, v, m, bias_mk, bias_qm, scale)


def register_cuda_kernel() -> str:
    """Register the op's CUDA implementation; returns which one: "triton" or "reference".

    The Triton kernel when triton imports, else the plain-PyTorch reference (the op's behaviour stays defined
    either way). Idempotent: later calls return the first call's choice without registering again.
    """
    global _cuda_kernel
    if _cuda_kernel is not None:
        return _cuda_kernel
    from ..mediator_attention import mediator_attention  # the CustomOpDefs
    from ..mediator_block import mediator_block

    ok, why = triton_available()
    if ok:
        mediator_attention.register_kernel("cuda")(_cuda_triton_impl)
        mediator_block.register_kernel("cuda")(_cuda_block_impl)
        _cuda_kernel = "triton"
    else:
        log.info("mediator attention on CUDA uses the PyTorch reference: %s", why)
        mediator_attention.register_kernel("cuda")(_cuda_reference_impl)
        _cuda_kernel = "reference"
    return _cuda_kernel


def registered_cuda_kernel() -> str | None:
    """Which CUDA implementation :func:`register_cuda_kernel` installed, or None if it has not run."""
    return _cuda_kernel
