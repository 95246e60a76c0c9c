"""Pixel-space samples as files people can look at: one PNG per image at native resolution, a labelled grid.

Images arrive as the model outputs them, float (B, C, H, W) in the data range [-1, 1] (C = 1 grey, 3 RGB), and
are written as 8-bit PNGs: round((x + 1) * 127.5), clipped. Folders are written under a temporary name and
renamed, so a run that is interrupted leaves the previous images (or none), never a mix. Torch-free: numpy
arrays and torch tensors alike (the base install writes the same files as the ``build`` one).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..core.files import replacing


def as_numpy(images) -> np.ndarray:
    """A float32 numpy array of ``images``: a numpy array as it is, a torch tensor moved to the CPU."""
    if hasattr(images, "detach"):  # a torch tensor (torch is imported by whoever made it)
        images = images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def clamp_images(images) -> np.ndarray:
    """The samples as images: float32 (B, C, H, W) clamped to the data range [-1, 1] (a model's output overshoots
    it slightly; the raw values stay in the run's latents)."""
    return np.clip(as_numpy(images), -1.0, 1.0)


def to_uint8(images) -> np.ndarray:
    """(B, C, H, W) float in [-1, 1] -> uint8 (B, H, W) for C = 1, (B, H, W, 3) for C = 3."""
    x = np.round((clamp_images(images) + np.float32(1)) * np.float32(127.5)).astype(np.uint8)
    return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)


def from_uint8(images: np.ndarray):
    """uint8 (B, H, W) grey images -> float torch tensor (B, 1, H, W) in [-1, 1], the demo model's and the judge's
    input range."""
    import torch

    return torch.from_numpy(np.asarray(images)).float().div(127.5).sub(1.0).unsqueeze(1)


def save_images(images, folder: Path) -> list[Path]:
    """``folder/000.png``, ``001.png``, ...: each image at native resolution; replaces ``folder`` as a whole (a
    failed write removes what it wrote)."""
    from PIL import Image

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    width = max(3, len(str(len(images) - 1)))
    names = []
    try:
        for i, arr in enumerate(to_uint8(images)):
            name = f"{i:0{width}d}.png"
            Image.fromarray(arr).save(tmp / name)
            names.append(name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return [folder / n for n in names]


def labelled_grid(
    images,
    captions: list[str],
    path: Path,
    *,
    scale: int | None = None,
    columns: int | None = None,
    title: str | None = None,
) -> Path:
    """A grid PNG of the images, each enlarged (nearest neighbour) with its caption underneath."""
    from PIL import Image, ImageDraw, ImageFont

    arrs = to_uint8(images)
    B = len(arrs)
    h, w = arrs.shape[1:3]
    scale = scale or max(1, 112 // max(h, w))
    columns = columns or min(B, 10)
    rows = -(-B // columns)
    font = ImageFont.load_default()
    cell_w, cell_h, caption_h, pad = w * scale, h * scale, 14, 4
    title_h = 18 if title else 0
    grid = Image.new(
        "RGB", (columns * (cell_w + pad) + pad, title_h + rows * (cell_h + caption_h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, 3), title, fill="black", font=font)
    for i, (arr, caption) in enumerate(zip(arrs, captions)):
        r, c = divmod(i, columns)
        x0, y0 = pad + c * (cell_w + pad), title_h + pad + r * (cell_h + caption_h + pad)
        tile = Image.fromarray(arr).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
        grid.paste(tile, (x0, y0))
        text = caption
        while text and draw.textlength(text, font=font) > cell_w:
            text = text[:-1]
        draw.text((x0, y0 + cell_h + 1), text, fill="black", font=font)
    path = Path(path)
    with replacing(path) as tmp:
        grid.save(tmp, format="PNG")
    return path
