"""Decoding latents to images with a local ``diffusers`` AutoencoderKL folder (sd-vae-ft-ema layout)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError

LATENT_SCALE = 0.18215  # sd-vae: latents are scaled by this factor before the diffusion model sees them


#: The weight files diffusers' ``from_pretrained`` reads (without a variant), whole or sharded.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin.index.json",
)
GET_VAE = "download e.g. stabilityai/sd-vae-ft-ema and point --vae at that folder"


def check_vae_folder(path: str | os.PathLike) -> Path:
    """``path`` if it looks like a diffusers AutoencoderKL folder: a JSON config.json naming AutoencoderKL and a
    weights file. ConfigError naming the folder and what is wrong otherwise; needs no diffusers, so a bad --vae
    is refused before sampling."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"the VAE folder {path} does not exist or is not a folder: {GET_VAE}")
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"{path} is not a diffusers AutoencoderKL folder (no config.json): {GET_VAE}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{config} is not valid JSON ({e}): the download may be incomplete; download the folder again"
        ) from None
    kind = data.get("_class_name") if isinstance(data, dict) else None
    if kind != "AutoencoderKL":
        what = f"a config of {kind!r}" if isinstance(kind, str) else "not a diffusers model config"
        raise ConfigError(f"{config} is {what}, not of a diffusers AutoencoderKL: {GET_VAE}")
    if not any((path / name).is_file() and (path / name).stat().st_size > 0 for name in WEIGHT_FILES):
        raise ConfigError(
            f"{path} has no weights (none of {', '.join(WEIGHT_FILES[:2])}, or they are empty): "
            f"the download may be incomplete; download the folder again"
        )
    return path


def load_vae(path: str | os.PathLike, device: str = "cpu"):
    """The AutoencoderKL in the local folder ``path`` (no download); ConfigError for a folder that does not
    hold one (:func:`check_vae_folder`) or whose files diffusers cannot load."""
    path = check_vae_folder(path)
    try:
        from diffusers.models import AutoencoderKL
    except ImportError:
        raise ConfigError("decoding needs diffusers: pip install 'medexport[vae]'") from None
    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        first_line = (str(e) or type(e).__name__).splitlines()[0]
        raise ConfigError(
            f"cannot load the AutoencoderKL in {path} ({first_line}): its files may be damaged; "
            f"download the folder again"
        ) from None
    return vae.to(device).eval()


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
        grid[:, r * H : (r + 1) * H, c * W : (c + 1) * W] = images[i]
    path = Path(path)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path
