"""The second demo family, fashion-mnist-p2 (196 tokens; 4, 16 and 48 mediators): shipped in float16, hash-checked,
listed by ``build --help``, built by ``build --demo``, and judged on real samples."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import medexport
from medexport.bundle import Bundle, verify_bundle
from medexport.cli import cli
from medexport.core.assets import AssetError
from medexport.core.settings import SamplingSettings
from medexport.demo import demo_bundle_name, demo_card, demo_checkpoints, demo_folder, demo_names
from medexport.judge import score
from medexport.model import load_checkpoint, read_checkpoint

DEMO = "fashion-mnist-p2"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_the_family_ships_in_fp16_and_describes_itself():
    assert demo_names() == ["fashion-mnist", DEMO] and demo_bundle_name(DEMO) == "fashion-mnist-p2-demo"
    folder = demo_folder(DEMO)
    card = demo_card(folder)
    assert card["dtype"] == "fp16" and card["card"] == "models/fashion-mnist-p2-demo.md"
    sampling = SamplingSettings.from_dict(card["sampling"])
    assert sampling.schedule and sampling.cfg_scale > 1
    paths = demo_checkpoints(folder=folder)
    assert sorted(paths) == [4, 16, 48]
    assert sum(p.stat().st_size for p in paths.values()) < 15e6  # float32 would be twice this
    for n, path in paths.items():
        with safe_open(str(path), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
        state, info = read_checkpoint(path)
        model = load_checkpoint(path)  # stored in float16, loaded as float32, value for value
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert torch.equal(model.state_dict()["final_layer.linear.weight"], state["final_layer.linear.weight"].float())
        cfg = info.config
        assert (cfg.mediators, cfg.patch_size, cfg.num_tokens, cfg.input_size) == (n, 2, 196, 28)
        assert info.sampling == card["sampling"] and info.train_steps == card["train_steps"][str(n)] > 0
    assert read_checkpoint(paths[48])[1].config.mediator_grid == (6, 8)  # the non-square count


def test_build_lists_the_demos_and_refuses_a_damaged_weights_file(tmp_path):
    r = run("build", "--help")
    assert r.exit_code == 0 and "[fashion-mnist|fashion-mnist-p2]" in r.output.replace("\n", "").replace(" ", "")
    copy = tmp_path / "p2"
    shutil.copytree(demo_folder(DEMO), copy)
    weights = copy / demo_card(copy)["files"]["16"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="fashion-sit-m16.safetensors.*damaged or was changed"):
        demo_checkpoints([16], folder=copy)
    assert sorted(demo_checkpoints([4, 48], folder=copy)) == [4, 48]  # the others are still good


def test_build_demo_p2_verifies_and_its_images_are_recognised(tmp_path):
    out = tmp_path / "p2"
    r = run("build", "--demo", DEMO, "--mediators", "48", "-o", out)
    assert r.exit_code == 0, r.output
    b = Bundle(out)
    assert b.counts == [48] and b.config(48).num_tokens == 196 and b.data["dataset"] == "fashion-mnist"
    results = verify_bundle(b)
    assert len(results) == 1 and results[0].passed and results[0].max_rel < 1e-5, results
    pipe = medexport.Pipeline.from_bundle(out, backend="onnxruntime", threads=1)
    labels = [i % 10 for i in range(40)]
    s = score(pipe.sample(labels, seed=0).latents, labels)  # recommended sampler and guidance, 48 mediators
    # chance is 10%; the trained family, at its recommended settings, far more
    assert s.accuracy >= 0.75, s
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sampling"]["cfg_scale"] == demo_card(demo_folder(DEMO))["sampling"]["cfg_scale"]
