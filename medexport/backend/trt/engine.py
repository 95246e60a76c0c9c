"""TensorRT: building strongly typed plans through Polygraphy and running them with torch tensors.

This is the only module that touches TensorRT (plus :mod:`.plugin` for the mediator-attention plugin); it
imports TensorRT lazily, so everything else works where TensorRT is absent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...core.batch import BatchRange
from ...core.files import replacing
from ...core.sampling import ModelShape
from ...errors import BackendUnavailableError, BundleError
from ..base import Runner

log = logging.getLogger(__name__)


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): TensorRT importable and a CUDA GPU present."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return False, f"TensorRT is not installed ({e}); install it from NVIDIA's package index"
    if not torch.cuda.is_available():
        return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name()}"


def require_tensorrt():
    ok, why = tensorrt_status()
    if not ok:
        raise BackendUnavailableError(
            f"the tensorrt backend is not available here: {why}. Use --backend onnxruntime (or auto)."
        )
    import tensorrt as trt

    return trt


def hardware() -> dict:
    """What a plan is tied to: the TensorRT version and the GPU's compute capability."""
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": trt.__version__, "gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def plan_mismatch(recorded: dict) -> str | None:
    """Why a plan built on ``recorded`` hardware cannot run here (another TensorRT version or GPU), or None."""
    here = hardware()
    for key in ("tensorrt", "compute_capability"):
        if recorded.get(key) != here[key]:
            return (
                f"this TensorRT plan was built with {key} {recorded.get(key)!r}, this machine has "
                f"{here[key]!r}: rebuild it here with `medexport build ... --force` (plans are tied to both)"
            )
    return None


def check_plan_compatible(recorded: dict) -> None:
    """BundleError when a plan was built for another TensorRT version or GPU."""
    mismatch = plan_mismatch(recorded)
    if mismatch:
        raise BundleError(mismatch)


@dataclass(frozen=True)
class TrtBuild:
    """What a TensorRT build needs beyond the ONNX file."""

    batch: BatchRange
    latent_shape: tuple[int, int, int]  # (C, S, S)
    plugin: bool = True
    timing_cache: Path | None = None
    optimization_level: int = 3
    workspace_bytes: int | None = None


def build_plan(onnx_path: Path, plan_path: Path, build: TrtBuild) -> dict:
    """Build a strongly typed plan for ``onnx_path`` (precision comes from the graph) and write it atomically.

    Returns what the manifest records: versions, hardware, whether the plugin was used.
    """
    trt = require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path

    plugin_used = False
    if build.plugin:
        from .plugin import plugin_available, register_plugin

        ok, why = plugin_available()
        if ok:
            register_plugin()
            plugin_used = True
        else:
            log.warning("mediator-attention plugin not used (%s): the function body is built instead", why)
    C, S, _ = build.latent_shape
    b = build.batch
    profile = (
        Profile()
        .add("x", min=(b.min, C, S, S), opt=(b.opt, C, S, S), max=(b.max, C, S, S))
        .add("t", min=(b.min,), opt=(b.opt,), max=(b.max,))
        .add("y", min=(b.min,), opt=(b.opt,), max=(b.max,))
    )
    kwargs = {"profiles": [profile], "builder_optimization_level": build.optimization_level}
    if build.timing_cache is not None:
        kwargs["load_timing_cache"] = str(build.timing_cache)
    if build.workspace_bytes:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: build.workspace_bytes}
    network = network_from_onnx_path(str(onnx_path), strongly_typed=True)  # (builder, network, parser)
    plugin_layers = count_plugin_layers(trt, network[1])
    if plugin_used and not plugin_layers:
        log.warning(
            "the mediator-attention plugin is registered but the parser built the function body instead "
            "(no plugin layer in the network): the manifest records plugin: false"
        )
    plugin_used = plugin_layers > 0
    engine = engine_from_network(
        network, CreateConfig(**kwargs), save_timing_cache=str(build.timing_cache) if build.timing_cache else None
    )
    with replacing(plan_path) as tmp:
        tmp.write_bytes(engine.serialize())
    return {**hardware(), "plugin": plugin_used, "plugin_layers": plugin_layers}


def count_plugin_layers(trt, network) -> int:
    """Plugin layers in a parsed network: what the plugin *did*, not only that it was registered."""
    kinds = {getattr(trt.LayerType, k) for k in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3") if hasattr(trt.LayerType, k)}
    return sum(1 for i in range(network.num_layers) if network.get_layer(i).type in kinds)


class SharedActivationMemory:
    """One device buffer for the activations of every engine: they never run at the same time."""

    def __init__(self, device: str = "cuda"):
        self.device = device
        self.buffer = torch.empty(0, dtype=torch.uint8, device=device)

    def bind(self, context, size: int) -> None:
        if size > self.buffer.numel():
            self.buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
        context.set_device_memory(self.buffer.data_ptr(), size)


class TrtRunner(Runner):
    """Runs a TensorRT plan with torch CUDA tensors; activations live in a shared buffer."""

    backend = "tensorrt"

    def __init__(
        self,
        plan_path: str | os.PathLike,
        mediators: int,
        *,
        precision: str,
        batch_range: BatchRange,
        shared_memory: SharedActivationMemory | None = None,
        recorded_hardware: dict | None = None,
        shape: ModelShape | None = None,
    ):
        super().__init__(mediators, precision=precision, device="cuda", batch_range=batch_range, shape=shape)
        self.plan_path = Path(plan_path)
        self.shared = shared_memory or SharedActivationMemory()
        self.recorded_hardware = recorded_hardware or {}
        self.engine = self.context = None
        self.activation_bytes = 0

    def activate(self) -> None:
        if self.engine is None:
            trt = require_tensorrt()
            if self.recorded_hardware:
                check_plan_compatible(self.recorded_hardware)
            from .plugin import plugin_available, register_plugin

            if plugin_available()[0]:
                register_plugin()  # plans built with the plugin need its registration to deserialise
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if self.engine is None:
                raise BundleError(f"TensorRT could not deserialise {self.plan_path.name}: rebuild it with --force")
            self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            self.activation_bytes = self.engine.device_memory_size_v2
        super().activate()

    def deactivate(self) -> None:
        self.engine = self.context = None
        super().deactivate()

    def infer(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        x = x.to("cuda", torch.float32).contiguous()
        t = t.to("cuda", torch.float32).contiguous()
        y = y.to("cuda", torch.int64).contiguous()
        out = torch.empty_like(x)
        ctx = self.context
        self.shared.bind(ctx, self.activation_bytes)
        for name, tensor in (("x", x), ("t", t), ("y", y)):
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        ctx.set_tensor_address("v", out.data_ptr())
        if not ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for {self.plan_path.name}")
        return out

    def memory_bytes(self) -> int | None:
        return self.activation_bytes or None
