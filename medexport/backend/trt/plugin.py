"""TensorRT plugin ``medexport::MediatorAttention``: the fused Triton kernel compiled ahead of time.

The plugin is a TensorRT "quickly deployable" Python plugin (``tensorrt.plugin``) with an AOT implementation
(TensorRT >= 10.9): at engine build time :func:`register_plugin`'s ``aot_impl`` compiles
:func:`medexport.ops.kernels.triton_mediator.mediator_attention_kernel` to PTX with ``triton.compile`` and hands
TensorRT the PTX and its launch parameters. TensorRT embeds the PTX in the engine, so the engine runs on the
plain TensorRT runtime (trtexec, C++) with no Python and no registration at run time.

Interface (same as ``torch.ops.medexport.mediator_attention``):

    inputs      q, k, v (B, H, N, d), m (B, H, n, d), bias_mk (H, n, N), bias_qm (H, N, n); one dtype among
                float32 / float16 / bfloat16 (the ONNX export casts the biases to q's dtype)
    attribute   scale: float
    output      o: q's shape and dtype

An ONNX node reaches this plugin when its op type is ``MediatorAttention`` and it carries the string attribute
``plugin_namespace = "medexport"`` (and ``aot = 1`` where the parser is asked to choose the AOT path).

What the AOT path needs, from TensorRT's documentation and samples (``samples/python/quickly_deployable_plugins``)
and the ``tensorrt.plugin`` sources:

* the kernel's runtime parameters are (input pointers, int32 scalars, output pointers) in that order; the
  scalars are ``trtp.SymInt32`` expressions of the I/O shapes, and int32 is the only scalar type, so ``scale``
  and the block sizes are compile-time constants baked into the PTX (AOT attributes are not serialised into the
  engine anyway) and the tensor strides are derived from the shapes (TensorRT's LINEAR format is row-major);
* n, d and H must be build-time constants (a checkpoint fixes them); B and N may be dynamic;
* Triton appends hidden scratch-pointer parameters to every kernel; TensorRT passes null for parameters it was
  not given, which is correct only while Triton reports no scratch memory, so :func:`_compile` refuses kernels
  that need scratch or special launches (clusters, cooperative grids);
* ``aot_impl`` receives every registered attribute (here ``scale``) and the tactic; ``autotune`` advertises the
  type combinations and tactics. Tactic t launches t programs per head (the ``splits`` of the kernel), and
  TensorRT times each at build time.

Not verified on hardware (no TensorRT in this project's environments): whether TensorRT raises a kernel's
dynamic shared-memory limit above 48 KiB (the kernel asks for more for float32 or n >= 64, as Triton's own
launcher allows), and PTX ISA versions newer than the installed driver accepts (Triton emits the ISA of its
bundled ptxas; an old driver then rejects the PTX when the engine runs).
"""

# No ``from __future__ import annotations`` here: tensorrt.plugin inspects the annotations of the decorated
# functions as classes (issubclass(annotation, TensorDesc)), which string annotations would break.

import logging
from functools import lru_cache
from typing import List, Tuple, Union  # not the builtins: older tensorrt.plugin validators want typing's

import torch

from ...errors import BackendUnavailableError
from ...ops.mediator_attention import ONNX_OP_TYPE as PLUGIN_NAME  # the plugin is named after the node's op
from ...ops.mediator_attention import PLUGIN_NAMESPACE

log = logging.getLogger(__name__)

PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"

#: The first TensorRT release with ``tensorrt.plugin.aot_impl``.
MIN_TENSORRT = (10, 9)

#: Tactics TensorRT times at build time; each value is the number of programs that share one head's queries.
SPLIT_TACTICS = (1, 2, 4, 8)

#: Tile length compiled into the PTX (keys per stage-1 tile, queries per stage-2 tile).
BLOCK_N = 64

_registered = False


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def plugin_available() -> tuple[bool, str]:
    """(True, "") when the plugin can be registered and built here, else (False, why not).

    Needs TensorRT >= 10.9 with ``tensorrt.plugin``, a CUDA device, and triton (to compile the kernel).
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, (
            f"TensorRT is not installed ({exc}); the {PLUGIN_ID} plugin needs TensorRT >= "
            f"{'.'.join(map(str, MIN_TENSORRT))} (pip install 'medexport[tensorrt]')"
        )
    version = getattr(trt, "__version__", "0")
    if _version_tuple(version)[:2] < MIN_TENSORRT:
        return False, (
            f"TensorRT {version} is too old: AOT Python plugins (tensorrt.plugin.aot_impl) need "
            f"TensorRT >= {'.'.join(map(str, MIN_TENSORRT))}"
        )
    try:
        import tensorrt.plugin as trtp
    except ImportError as exc:
        return False, f"TensorRT {version} has no usable tensorrt.plugin module ({exc})"
    if not hasattr(trtp, "aot_impl"):
        return False, f"TensorRT {version}: tensorrt.plugin has no aot_impl (AOT plugins are disabled in this build)"
    if not torch.cuda.is_available():
        return False, f"no CUDA device: building TensorRT {version} engines with the {PLUGIN_ID} plugin needs a GPU"
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, (
            f"triton is not installed ({exc}); it compiles the plugin's kernel (pip install 'medexport[triton]')"
        )
    return True, ""


@lru_cache(maxsize=None)
def _compile(dtype: torch.dtype, num_mediators: int, head_dim: int, scale: float):
    """The kernel compiled for the current GPU; cached, as TensorRT asks once per tactic and type combination."""
    from ...ops.kernels import triton_mediator

    compiled = triton_mediator.compile_kernel(dtype, num_mediators, head_dim, scale, block_n=BLOCK_N)
    md = compiled.metadata
    problems = [
        f"{field}={getattr(md, field)}"
        for field in ("global_scratch_size", "profile_scratch_size", "tmem_size")
        if getattr(md, field, 0)
    ]
    problems += [f"{field}=True" for field in ("launch_cooperative_grid", "launch_pdl") if getattr(md, field, False)]
    if getattr(md, "num_ctas", 1) != 1:
        problems.append(f"num_ctas={md.num_ctas}")
    if problems:
        raise BackendUnavailableError(
            f"the Triton mediator kernel compiled with launch features TensorRT AOT plugins cannot provide "
            f"({', '.join(problems)}); triton {getattr(md, 'triton_version', '?')} may need a different release"
        )
    log.debug(
        "compiled %s for %s, n=%d, d=%d: %d warps, %d bytes shared",
        md.name,
        dtype,
        num_mediators,
        head_dim,
        md.num_warps,
        md.shared,
    )
    return compiled


def _constant(expr, what: str) -> int:
    """The value of a shape expression that must be fixed when the engine is built."""
    if expr.is_constant:
        return int(expr.constant_value())
    raise BackendUnavailableError(
        f"{PLUGIN_ID}: {what} must be fixed in the network (it is dynamic); export the model with a static {what}"
    )


def register_plugin() -> None:
    """Register ``medexport::MediatorAttention`` with TensorRT's plugin registry (idempotent).

    Raises BackendUnavailableError with the reason when :func:`plugin_available` says no.
    """
    global _registered
    if _registered:
        return
    ok, why = plugin_available()
    if not ok:
        raise BackendUnavailableError(f"cannot register the {PLUGIN_ID} TensorRT plugin: {why}")
    import tensorrt as trt
    import tensorrt.plugin as trtp

    # Registered by another copy of this module (or an earlier session in this process): registering twice fails.
    try:
        getattr(getattr(trtp.op, PLUGIN_NAMESPACE), PLUGIN_NAME)
        _registered = True
        return
    except AttributeError:
        pass

    torch_dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}

    @trtp.register(PLUGIN_ID)
    def mediator_attention_desc(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        m: trtp.TensorDesc,
        bias_mk: trtp.TensorDesc,
        bias_qm: trtp.TensorDesc,
        scale: float,
    ) -> trtp.TensorDesc:
        return q.like()  # o: q's shape and dtype

    @trtp.autotune(PLUGIN_ID)
    def mediator_attention_autotune(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        m: trtp.TensorDesc,
        bias_mk: trtp.TensorDesc,
        bias_qm: trtp.TensorDesc,
        outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        combination = trtp.AutoTuneCombination()
        combination.pos(list(range(7)), "FP32|FP16|BF16")  # 6 inputs and the output share one dtype, LINEAR
        combination.tactics(list(SPLIT_TACTICS))
        return [combination]

    @trtp.aot_impl(PLUGIN_ID)
    def mediator_attention_aot_impl(
        q: trtp.TensorDesc,
        k: trtp.TensorDesc,
        v: trtp.TensorDesc,
        m: trtp.TensorDesc,
        bias_mk: trtp.TensorDesc,
        bias_qm: trtp.TensorDesc,
        scale: float,
        outputs: Tuple[trtp.TensorDesc],
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        from ...ops.kernels import triton_mediator

        if q.dtype not in torch_dtypes:
            raise BackendUnavailableError(f"{PLUGIN_ID}: no kernel for {q.dtype}")
        batch, seq_len = q.shape_expr[0], q.shape_expr[2]  # may be dynamic
        heads = _constant(q.shape_expr[1], "the number of heads")
        head_dim = _constant(q.shape_expr[3], "the head dim")
        mediators = _constant(m.shape_expr[2], "the mediator count")
        compiled = _compile(torch_dtypes[q.dtype], mediators, head_dim, float(scale))

        params = trtp.KernelLaunchParams()
        params.grid_x = batch * heads  # one program per (batch, head) ...
        params.grid_y = max(1, int(tactic))  # ... times the programs sharing its query tiles (0: no tactic)
        params.block_x = compiled.metadata.num_warps * 32
        params.shared_mem = compiled.metadata.shared
        scalars = triton_mediator.scalar_args_for_contiguous(heads, seq_len, mediators, head_dim)
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(value) for value in scalars])
        return compiled.metadata.name, compiled.asm["ptx"], params, extra_args

    _registered = True
    log.info("registered TensorRT plugin %s (AOT, Triton PTX)", PLUGIN_ID)
