import os

import pytest

try:
    import torch
except ImportError:  # the torch-free core's tests (tests/core) run on the base install, without torch
    torch = None
else:
    torch.set_num_threads(min(2, os.cpu_count() or 1))

import medexport  # noqa: E402
from medexport.core.config import ModelConfig  # noqa: E402

#: A tiny mediator SiT: 2 blocks, width 64, 4 heads, 8x8 token grid (latent 16 at patch 2).
TINY = ModelConfig(depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=16, mediators=16, num_classes=10)


@pytest.fixture
def tiny_config():
    return TINY


def tiny_model(mediators: int = 16, seed: int = 0, **overrides):
    from dataclasses import replace

    return medexport.create_model(replace(TINY, mediators=mediators, **overrides), seed=seed, init="random")


def model_inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=g)
    return x, t, y


COUNTS = (16, 32, 64)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """One tiny trainer checkpoint per mediator count (different weights each)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        n: medexport.save_checkpoint(tiny_model(n, seed=n), folder / f"tiny-m{n}.pt", form="trainer") for n in COUNTS
    }


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoints):
    """A bundle of the tiny models for 16, 32 and 64 mediators, ONNX Runtime engines, batch 1:2:4.

    Shared by many tests: do not modify it (copy it first, see ``copy_bundle``).
    """
    from medexport.bundle import BuildSettings, ModelSource, build_bundle
    from medexport.core.batch import BatchRange

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    sources = [ModelSource(n, checkpoint=p) for n, p in tiny_checkpoints.items()]
    build_bundle(sources, out, BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)), show_progress=False)
    return out


def copy_bundle(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def flip_byte_in_record(path, prefix="data/"):
    """Flip one byte in the middle of the largest tensor record under ``prefix`` of a torch.save zip, as a bad
    disk or download would; returns the record's name."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = max(
            (i for i in zf.infolist() if i.filename.split("/", 1)[-1].startswith(prefix)), key=lambda i: i.file_size
        )
    data = bytearray(path.read_bytes())
    head = info.header_offset  # a local file header: 30 bytes, then its name and extra field, then the data
    name_len, extra_len = (int.from_bytes(data[i : i + 2], "little") for i in (head + 26, head + 28))
    data[head + 30 + name_len + extra_len + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return info.filename
