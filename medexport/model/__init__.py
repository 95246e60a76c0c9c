"""The PyTorch mediator DiT/SiT: config, network, checkpoints, FLOPs."""

from __future__ import annotations

import torch

from ..core.config import DEFAULT_IMAGE_SIZE, MODEL_NAMES, ModelConfig, config_from_name, mediator_grid
from .checkpoint import CheckpointInfo, infer_config, load_checkpoint, read_checkpoint, save_checkpoint
from .flops import flops_table, forward_flops
from .mediator_dit import MediatorDiT


def create_model(
    name: str | ModelConfig,
    *,
    mediators: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    seed: int | None = None,
    init: str = "reference",
    **overrides,
) -> MediatorDiT:
    """A randomly initialised mediator DiT/SiT in eval mode.

    Args:
        name: a named config ("SiT-XL/2", "DiT-S/4", ...) or a :class:`ModelConfig` (custom sizes).
        mediators: mediator count n (required with a name).
        image_size: image side in pixels; the latent side is image_size / 8.
        num_classes: class count (the null class is added on top).
        learn_sigma: output 2*C_in channels, of which the forward returns the first C_in.
        seed: seeds the initialisation, for reproducible weights.
        init: "reference" (zero-initialised adaLN and output layers: the network outputs zeros) or "random"
            (those layers random too: non-trivial outputs for tests and benchmarks).
        overrides: replace ModelConfig fields of a named config (depth, hidden_size, num_heads, ...).
    """
    from ..errors import ConfigError

    if init not in ("reference", "random"):
        raise ConfigError(f"init must be 'reference' or 'random', got {init!r}")
    if isinstance(name, ModelConfig):
        cfg = name if mediators is None else name.with_mediators(mediators)
    else:
        if mediators is None:
            raise ConfigError("create_model needs mediators=<count> with a named config")
        cfg = config_from_name(
            name,
            mediators=mediators,
            image_size=image_size,
            num_classes=num_classes,
            learn_sigma=learn_sigma,
            **overrides,
        )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = MediatorDiT(cfg)
        if init == "random":
            model.initialize_weights(zero_init=False)
    model.eval()
    model.refresh_constants()
    return model


__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "MODEL_NAMES",
    "CheckpointInfo",
    "MediatorDiT",
    "ModelConfig",
    "config_from_name",
    "create_model",
    "flops_table",
    "forward_flops",
    "infer_config",
    "load_checkpoint",
    "mediator_grid",
    "read_checkpoint",
    "save_checkpoint",
]
