"""The TensorRT plugin ``medexport::MediatorAttention`` (AOT Triton kernel).

Engine tests need TensorRT >= 10.9 and a CUDA device and skip, saying which is missing, elsewhere. The tests of
:func:`plugin_available` and of the refusal to register run everywhere. (The Triton half of the plugin, the
kernel compiled to PTX with the launch contract the plugin relies on, is tested without TensorRT in
``test_triton_mediator.py``.)
"""

import importlib.util

import pytest
import torch

from medexport.backend.trt import plugin
from medexport.errors import BackendUnavailableError
from medexport.ops import mediator_attention_reference

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
AVAILABLE, WHY_NOT = plugin.plugin_available()
needs_plugin = pytest.mark.skipif(not AVAILABLE, reason=f"TensorRT plugin unavailable: {WHY_NOT}")

TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 2e-2}


def test_plugin_available_says_why():
    ok, why = plugin.plugin_available()
    if not HAS_TENSORRT:
        assert ok is False and "TensorRT" in why and "not installed" in why
    elif not torch.cuda.is_available():
        assert ok is False and "CUDA" in why
    else:
        assert ok or why  # a reason whenever it says no (old TensorRT, no triton)


@pytest.mark.skipif(AVAILABLE, reason="the plugin is available here; this checks the refusal elsewhere")
def test_register_plugin_refuses_with_the_reason():
    with pytest.raises(BackendUnavailableError, match="TensorRT|CUDA|triton") as info:
        plugin.register_plugin()
    assert WHY_NOT in str(info.value)


@needs_plugin
def test_register_plugin_is_idempotent():
    import tensorrt.plugin as trtp

    plugin.register_plugin()
    plugin.register_plugin()
    assert getattr(trtp.op, plugin.PLUGIN_NAMESPACE).MediatorAttention is not None


def _build_engine(dtype: torch.dtype, H: int, n: int, d: int, scale: float, max_batch: int, max_seq: int):
    """A strongly typed engine holding one plugin layer; B and N dynamic (1..max), H, n, d fixed."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    plugin.register_plugin()
    trt_dtype = {torch.float32: trt.float32, torch.float16: trt.float16, torch.bfloat16: trt.bfloat16}[dtype]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # implied on 11.x
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    shapes = {  # -1: dynamic batch B / sequence N
        "q": (-1, H, -1, d),
        "k": (-1, H, -1, d),
        "v": (-1, H, -1, d),
        "m": (-1, H, n, d),
        "bias_mk": (H, n, -1),
        "bias_qm": (H, -1, n),
    }
    inputs = [network.add_input(name, trt_dtype, shape) for name, shape in shapes.items()]
    layer = network.add_plugin(
        getattr(trtp.op, plugin.PLUGIN_NAMESPACE).MediatorAttention(*inputs, scale=scale), aot=True
    )
    layer.get_output(0).name = "o"
    network.mark_output(layer.get_output(0))

    def concrete(shape, B, N):
        dims = []
        for i, s in enumerate(shape):
            if s != -1:
                dims.append(s)
            elif i == 0 and len(shape) == 4:
                dims.append(B)
            else:
                dims.append(N)
        return tuple(dims)

    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(
            name, concrete(shape, 1, 1), concrete(shape, max_batch, max_seq), concrete(shape, max_batch, max_seq)
        )
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT failed to build the engine (see its log above)"
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    return engine, list(shapes)


@needs_plugin
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_engine_matches_reference(dtype):
    """An engine with the plugin against the reference in float64, at two (B, N) of one dynamic engine."""
    torch_dtype = getattr(torch, dtype)
    H, n, d = 2, 16, 72
    scale = d**-0.5
    engine, names = _build_engine(torch_dtype, H, n, d, scale, max_batch=2, max_seq=128)
    context = engine.create_execution_context()
    stream = torch.cuda.current_stream()
    for B, N in [(2, 128), (1, 100)]:
        g = torch.Generator(device="cuda").manual_seed(B * 1000 + N)
        shapes = [(B, H, N, d), (B, H, N, d), (B, H, N, d), (B, H, n, d), (H, n, N), (H, N, n)]
        tensors = [torch.randn(s, generator=g, device="cuda").to(torch_dtype) for s in shapes]
        out = torch.empty(B, H, N, d, dtype=torch_dtype, device="cuda")
        for name, t in zip(names, tensors, strict=True):
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, t.data_ptr())
        context.set_tensor_address("o", out.data_ptr())
        assert context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        truth = mediator_attention_reference(*(t.double() for t in tensors), scale)
        error = ((out.double() - truth).abs().max() / truth.abs().max()).item()
        assert error < TOLERANCE[dtype], f"{dtype} B={B} N={N}: relative error {error:.3g}"
