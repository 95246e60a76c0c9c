"""Decoding latents (the VAE stands in as a callable with AutoencoderKL's interface) and the PNG grid."""

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from medexport.errors import ConfigError
from medexport.runtime.vae import LATENT_SCALE, decode, load_vae, save_grid


class ScalingVAE:
    """AutoencoderKL's decode interface: upsample 8x and keep 3 channels, so the scaling is visible."""

    device, dtype = torch.device("cpu"), torch.float32

    def decode(self, z):
        self.seen = z
        return SimpleNamespace(sample=torch.nn.functional.interpolate(z[:, :3], scale_factor=8))


def test_decode_scales_latents_and_makes_uint8_images(tmp_path):
    vae = ScalingVAE()
    latents = torch.full((3, 4, 4, 4), 0.1)
    latents[0] = 0.5  # 0.5 / 0.18215 > 1: clamps to white
    images = decode(vae, latents)
    torch.testing.assert_close(vae.seen, latents / LATENT_SCALE)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert images[0].min() == 255
    assert images[1].max() == images[1].min() == round((0.1 / LATENT_SCALE + 1) * 127.5)
    path = save_grid(images, tmp_path / "grid.png", columns=2)
    assert Image.open(path).size == (64, 64)


def test_vae_folder_errors(tmp_path):
    pytest.importorskip("diffusers", reason="diffusers (the vae extra) is not installed")
    with pytest.raises(ConfigError, match="not a diffusers AutoencoderKL folder"):
        load_vae(tmp_path)


def test_missing_diffusers_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_diffusers(name, *args, **kwargs):
        if name.startswith("diffusers"):
            raise ImportError("No module named 'diffusers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_diffusers)
    with pytest.raises(ConfigError, match=r"pip install 'medexport\[vae\]'"):
        load_vae(tmp_path)
