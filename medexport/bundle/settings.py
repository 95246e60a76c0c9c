"""What a build is asked to do: the model sources and the build settings (one frozen dataclass each)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..backend import registry
from ..core.batch import BatchRange
from ..core.config import DEFAULT_IMAGE_SIZE, FULL
from ..core.manifest import Source
from ..errors import ConfigError
from ..quant import ALL_PRECISIONS, quantization

PRECISION_CHOICES = ALL_PRECISIONS
#: Batch sizes engines accept by default, counting the CFG doubling; the demo model's, which is small.
DEFAULT_BATCH = BatchRange(1, 2, 16)
DEMO_BATCH = BatchRange(1, 64, 512)
DEFAULT_OUTPUT_ROOT = Path("engines")


@dataclass(frozen=True)
class BuildSettings:
    """Settings of ``medexport build``; each field is one CLI option.

    Attributes:
        backend: "auto" (the fastest engine backend that can build here: TensorRT with a CUDA GPU, else ONNX
            Runtime; see ``backend.registry.preference``), or an engine backend's name.
        precision: "fp32", "fp16" or "bf16": the dtype of the exported graph (TensorRT builds strongly typed,
            so precision comes from the graph); or a quantised form made from the fp32 graph: "int8" (dynamic,
            ONNX Runtime on CPU), "int8-static" or "fp8" (calibrated Q/DQ; see :mod:`medexport.quant`).
        calibration: the calibration set (``medexport calibrate``) that int8-static and fp8 are calibrated on.
        onnx_only: export (and quantise) the graphs but build no engine: for a precision or backend that cannot
            build here (fp8 for TensorRT on Hopper), to compile elsewhere.
        batch: batch sizes the engines accept, counting the CFG doubling (min:opt:max).
        opset: ONNX opset; None picks 20 (22 for bf16).
        backend_options: the backends' own build options by name (each backend declares its own, e.g.
            TensorRT's ``plugin`` and ``trt_optimization_level``: :attr:`EngineBackend.options`); those not given
            take their defaults.
    """

    backend: str = "auto"
    precision: str = "fp32"
    batch: BatchRange = DEFAULT_BATCH
    opset: int | None = None
    calibration: Path | None = None
    onnx_only: bool = False
    backend_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend != "auto" and self.backend not in registry.engine_names():
            raise ConfigError(
                f"unknown backend {self.backend!r}: choose auto or one of {', '.join(registry.engine_names())}"
            )
        declared = {o.name: o for _, o in registry.options()}
        unknown = sorted(set(self.backend_options) - set(declared))
        if unknown:
            raise ConfigError(
                f"unknown backend option(s) {', '.join(unknown)}: the backends declare "
                f"{', '.join(sorted(declared)) or 'none'}"
            )
        object.__setattr__(
            self,
            "backend_options",
            {name: o.check(self.backend_options.get(name, o.default)) for name, o in declared.items()},
        )
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISION_CHOICES)}")
        q = quantization(self.precision)
        if q is not None and q.calibrated and self.calibration is None:
            raise ConfigError(
                f"--precision {self.precision} is calibrated on the inputs its engines really receive: "
                f"record them from the fp32 bundle of these weights with `medexport calibrate "
                f"BUNDLE` (e.g. engines/fashion-mnist-demo), then pass --calibration with the folder it "
                f"wrote (e.g. calibration/fashion-mnist-demo)"
            )
        if self.calibration is not None and (q is None or not q.calibrated):
            raise ConfigError(
                f"--calibration applies to the calibrated precisions (int8-static, fp8), not {self.precision}: drop it"
            )

    def options_for(self, backend) -> dict:
        """The options ``backend`` (an :class:`EngineBackend`) declares, with their values."""
        return {o.name: self.backend_options[o.name] for o in backend.options}

    def to_dict(self) -> dict:
        d = {
            "backend": self.backend,
            "precision": self.precision,
            "batch": str(self.batch),
            "opset": self.opset,
            **self.backend_options,
        }
        if self.calibration is not None:
            d["calibration"] = str(Path(self.calibration).resolve())
        if self.onnx_only:
            d["onnx_only"] = True
        return d


@dataclass(frozen=True)
class ModelSource:
    """Where one mediator count's weights come from: a checkpoint, or a seeded random model of a named config.
    ``mediators`` 0 (``core.config.FULL``) is the full-attention model of a vanilla twin. ``expect_image_size``:
    the image side the user asked for with a checkpoint, which must be the one it was trained at."""

    mediators: int
    checkpoint: Path | None = None
    weights: str = "ema"
    model_name: str | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    expect_image_size: int | None = None

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.model_name is None):
            raise ConfigError("a model source is either a checkpoint or a named config with random weights")

    @property
    def is_random(self) -> bool:
        return self.checkpoint is None

    def record(self, sha256: str | None = None) -> Source:
        """The manifest's record of this source (a checkpoint's ``sha256`` given by the builder, which hashes
        it once)."""
        if self.is_random:
            return Source(
                "random",
                model=self.model_name,
                image_size=self.image_size,
                seed=self.seed,
                init="random",
                attention="full" if self.mediators == FULL else "mediator",
            )
        return Source("checkpoint", path=str(Path(self.checkpoint).resolve()), sha256=sha256, weights=self.weights)


def source_key(source: Source) -> str:
    """What identifies a count's weights, from its :class:`~medexport.core.manifest.Source` record: the
    checkpoint's sha256, or a key of the random model's recipe."""
    if source.kind == "checkpoint":
        return source.sha256
    import torch

    return content_key(source.to_dict(), torch.__version__)


def content_key(*parts) -> str:
    """A short, stable hash of JSON-serialisable parts: keys artifacts by what they were made from."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]
