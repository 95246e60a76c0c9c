"""Decoding latents to images with a local ``diffusers`` AutoencoderKL folder (sd-vae-ft-ema layout)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError

LATENT_SCALE = 0.18215  # sd-vae: latents are scaled by this factor before the diffusion model sees them


def load_vae(path: str | os.PathLike, device: str = "cpu"):
    """The AutoencoderKL in the local folder ``path`` (no download)."""
    try:
        from diffusers.models import AutoencoderKL
    except ImportError:
        raise ConfigError("decoding needs diffusers: pip install 'medexport[vae]'") from None
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a diffusers AutoencoderKL folder (no config.json): download e.g. "
                          f"stabilityai/sd-vae-ft-ema and point --vae at that folder")
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True).to(device).eval()


@torch.no_grad()
def decode(vae, latents: Tensor) -> Tensor:
    """(B, 4, S, S) latents -> (B, 3, 8S, 8S) uint8 images."""
    images = vae.decode(latents.to(vae.device, vae.dtype) / LATENT_SCALE).sample
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def save_grid(images: Tensor, path: str | os.PathLike, columns: int = 8) -> Path:
    """Write (B, 3, H, W) uint8 images as one PNG grid."""
    from PIL import Image

    B, _, H, W = images.shape
    cols = min(columns, B)
    rows = -(-B // cols)
    grid = torch.zeros(3, rows * H, cols * W, dtype=torch.uint8)
    for i in range(B):
        r, c = divmod(i, cols)
        grid[:, r * H:(r + 1) * H, c * W:(c + 1) * W] = images[i]
    path = Path(path)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path
