"""tools/train_demo.py: a few steps on tiny data, the reference trainer's checkpoint format, exact resumption,
refusal of a resume with other settings, and shipping the EMA weights."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import medexport
from medexport.core.assets import AssetError
from medexport.model import read_checkpoint

from ..data.fake_idx import write_fake

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--depth",
    "1",
    "--hidden-size",
    "32",
    "--num-heads",
    "2",
    "--batch-size",
    "8",
    "--limit",
    "64",
    "--ckpt-every",
    "2",
    "--log-every",
    "1",
]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("train_demo", ROOT / "tools" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fake(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def train(tool, run, data, *extra):
    return tool.main(["--run", str(run), "--data", str(data), *TINY, *map(str, extra)])


def test_checkpoints_have_the_reference_format_and_load(tool, data, tmp_path):
    assert train(tool, tmp_path / "run", data, "--mediators", "8", "--steps", "4") == 0
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["0000002.pt", "0000004.pt", "last.pt"]
    with torch.serialization.safe_globals([__import__("argparse").Namespace]):
        raw = torch.load(tmp_path / "run" / "checkpoints" / "0000004.pt", weights_only=True)
    assert set(raw) == {"model", "ema", "opt", "train_steps", "args"} and raw["train_steps"] == 4
    assert raw["args"].mediators == 8 and raw["args"].vae is None
    # medexport reads it like any user's checkpoint: a pixel-space, 8-mediator (2x4 grid) model
    _, info = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert info.config.mediators == 8 and info.config.mediator_grid == (2, 4) and info.train_steps == 4
    assert info.data["dataset"] == "fashion-mnist" and info.data["space"] == "pixel"
    model = medexport.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not any(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), raw["model"].values())
        if a.numel() > 1 and a.requires_grad
    )  # EMA weights by default, not the raw ones
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.rand(2), torch.tensor([1, 10])).shape == (2, 1, 28, 28)


def test_resume_is_exact(tool, data, tmp_path):
    train(tool, tmp_path / "straight", data, "--mediators", "4", "--steps", "4")
    train(tool, tmp_path / "resumed", data, "--mediators", "4", "--steps", "2")
    train(tool, tmp_path / "resumed", data, "--mediators", "4", "--steps", "4")  # picks up at step 2
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    assert b["train_steps"] == 4
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, rtol=0, atol=0, msg=f"{key}.{k}")


def test_resume_with_other_settings_is_refused(tool, data, tmp_path, capsys):
    train(tool, tmp_path / "run", data, "--mediators", "4", "--steps", "2")
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    assert train(tool, tmp_path / "run", data, "--mediators", "4", "--steps", "4", "--lr", "1e-3") == 1
    err = capsys.readouterr().err
    assert "trained with other settings" in err and "lr" in err
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before  # nothing changed


def test_missing_data_is_a_clear_error(tool, tmp_path, capsys):
    assert tool.main(["--run", str(tmp_path / "run"), "--data", str(tmp_path / "none"), *TINY, "--steps", "1"]) == 1
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ship_writes_checked_safetensors(tool, data, tmp_path):
    from medexport.demo import demo_card, demo_checkpoints

    for n in (4, 8):
        train(tool, tmp_path / f"m{n}", data, "--mediators", n, "--steps", "2")
    dest = tmp_path / "weights"
    sampling = json.dumps(
        {
            "sampler": "ode",
            "method": "euler",
            "steps": 10,
            "cfg_scale": 2.0,
            "cfg_channels": "all",
            "schedule": "4:0.5,8",
        }
    )
    assert (
        tool.main(
            ["--ship", str(tmp_path / "m4"), str(tmp_path / "m8"), "--ship-to", str(dest), "--recommend", sampling]
        )
        == 0
    )
    paths = demo_checkpoints(folder=dest)
    assert sorted(paths) == [4, 8] and demo_card(dest)["sampling"]["schedule"] == "4:0.5,8"
    _, info = read_checkpoint(paths[8])
    assert (
        info.format == "safetensors" and info.sampling["cfg_scale"] == 2.0 and info.data["dataset"] == "fashion-mnist"
    )
    assert info.train_steps == 2
    blob = bytearray(paths[4].read_bytes())
    blob[-1] ^= 1  # one flipped bit in a weight
    paths[4].write_bytes(bytes(blob))
    with pytest.raises(AssetError, match="fashion-sit-m4.safetensors.*damaged or was changed"):
        demo_checkpoints(folder=dest)


def test_ship_another_demo_in_fp16(tool, data, tmp_path):
    """--demo names the bundle; --ship-dtype fp16 halves the file and loads as the float32 weights rounded."""
    from medexport.demo import demo_card, demo_checkpoints

    train(tool, tmp_path / "m4", data, "--mediators", "4", "--steps", "2")
    dest16, dest32 = tmp_path / "w16", tmp_path / "w32"
    for dest, dtype in ((dest16, "fp16"), (dest32, "fp32")):
        assert (
            tool.main(
                [
                    "--ship",
                    str(tmp_path / "m4"),
                    "--ship-to",
                    str(dest),
                    "--demo",
                    "fashion-mnist-p2",
                    "--ship-dtype",
                    dtype,
                ]
            )
            == 0
        )
    assert demo_card(dest16)["name"] == "fashion-mnist-p2-demo" and demo_card(dest16)["dtype"] == "fp16"
    p16, p32 = demo_checkpoints(folder=dest16)[4], demo_checkpoints(folder=dest32)[4]
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    m16, m32 = medexport.load_checkpoint(p16), medexport.load_checkpoint(p32)
    for (k, a), b in zip(m16.state_dict().items(), m32.state_dict().values()):
        assert a.dtype == torch.float32, k
        torch.testing.assert_close(a, b.half().float(), rtol=0, atol=0)
    assert tool.main(["--ship", str(tmp_path / "m4"), "--ship-to", str(dest16), "--demo", "mnist"]) == 1
