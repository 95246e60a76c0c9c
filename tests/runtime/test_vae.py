"""Decoding latents (the VAE stands in as a callable with AutoencoderKL's interface) and the PNG grid."""

import re
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
    _vae_folder(tmp_path)  # a well-formed folder: only diffusers is missing
    with pytest.raises(ConfigError, match=r"pip install 'medexport\[vae\]'"):
        load_vae(tmp_path)


def _vae_folder(
    path, config='{"_class_name": "AutoencoderKL", "latent_channels": 4}', weights="diffusion_pytorch_model.safetensors"
):
    path.mkdir(exist_ok=True)
    if config is not None:
        (path / "config.json").write_bytes(config if isinstance(config, bytes) else config.encode())
    if weights is not None:
        (path / weights).write_bytes(b"weights")
    return path


@pytest.mark.parametrize(
    "folder, message",
    [
        (dict(config=None), "is not a diffusers AutoencoderKL folder (no config.json)"),
        (dict(config='{"_class_name": "AutoencoderKL",'), "config.json is not valid JSON"),
        (dict(config=b"\xff\xfe{}"), "config.json is not valid JSON"),
        (
            dict(config='{"_class_name": "UNet2DConditionModel"}'),
            "is a config of 'UNet2DConditionModel', not of a diffusers AutoencoderKL",
        ),
        (dict(config='["AutoencoderKL"]'), "is not a diffusers model config, not of a diffusers AutoencoderKL"),
        (dict(weights=None), "has no weights"),
        (dict(weights="model.ckpt"), "has no weights"),
    ],
)
def test_junk_vae_folders_are_refused_without_diffusers(tmp_path, folder, message):
    from medexport.runtime.vae import check_vae_folder

    path = _vae_folder(tmp_path / "vae", **folder)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        load_vae(path)
    assert str(path) in str(e.value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_vae_folder(path)
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        load_vae(tmp_path / "nowhere")
    assert check_vae_folder(_vae_folder(tmp_path / "good")) == tmp_path / "good"
