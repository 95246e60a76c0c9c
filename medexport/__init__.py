"""medexport: mediator DiT/SiT from PyTorch to deployed engines."""

__version__ = "0.1.0"

from . import kernels  # noqa: E402,F401  (registers the Triton kernel as the op's CUDA implementation)
from .errors import MedexportError  # noqa: E402
from .runtime.pipeline import Pipeline, SampleResult, TraceEntry  # noqa: E402
from .model import (MODEL_NAMES, MediatorDiT, ModelConfig, create_model, forward_flops,  # noqa: E402
                    load_checkpoint, save_checkpoint)

__all__ = ["MODEL_NAMES", "MediatorDiT", "MedexportError", "ModelConfig", "Pipeline", "SampleResult", "TraceEntry",
           "__version__", "create_model", "forward_flops", "load_checkpoint", "save_checkpoint"]
