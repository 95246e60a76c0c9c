"""Checkpoint forms, config inference and every refusal."""

import os
import pickle
from dataclasses import replace

import pytest
import torch

import medexport
from medexport.errors import CheckpointError, ConfigError, MedexportError, NotAMediatorModelError
from medexport.model import read_checkpoint
from tests.conftest import TINY, flip_byte_in_record, model_inputs, tiny_model


def _outputs(model, cfg):
    x, t, y = model_inputs(cfg, batch=2)
    with torch.no_grad():
        return model(x, t, y)


@pytest.mark.parametrize("form", ["trainer", "state_dict", "module", "orig_mod", "both", "safetensors"])
@pytest.mark.parametrize("mediators", [16, 32])
def test_every_form_round_trips(tmp_path, form, mediators):
    model = tiny_model(mediators)
    path = tmp_path / "ckpt.bin"
    if form in ("trainer", "state_dict", "safetensors"):
        medexport.save_checkpoint(model, path, form=form)
    else:
        prefix = {"module": "module.", "orig_mod": "_orig_mod.", "both": "module._orig_mod."}[form]
        torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    loaded = medexport.load_checkpoint(path)
    assert loaded.config == model.config
    assert not loaded.training
    torch.testing.assert_close(_outputs(loaded, model.config), _outputs(model, model.config), rtol=0, atol=0)
    expected_format = {"trainer": "trainer", "safetensors": "safetensors"}.get(form, "state_dict")
    assert loaded.checkpoint_info.format == expected_format


def test_trainer_checkpoint_ema_and_model_differ(tmp_path):
    model, ema = tiny_model(seed=0), tiny_model(seed=1)
    path = medexport.save_checkpoint(model, tmp_path / "t.pt", form="trainer", ema=ema)
    torch.testing.assert_close(_outputs(medexport.load_checkpoint(path), TINY), _outputs(ema, TINY))
    torch.testing.assert_close(_outputs(medexport.load_checkpoint(path, weights="model"), TINY), _outputs(model, TINY))


def test_learn_sigma_off_and_custom_sizes(tmp_path):
    model = medexport.create_model(
        replace(TINY, learn_sigma=False, in_channels=3, mlp_ratio=2.0, mediators=9), init="random", seed=0
    )
    path = medexport.save_checkpoint(model, tmp_path / "m.pt")
    loaded = medexport.load_checkpoint(path)
    assert loaded.config == model.config
    assert _outputs(loaded, model.config).shape == (2, 3, 16, 16)


def test_plain_dit_checkpoint_is_refused(tmp_path):
    """A plain DiT/SiT where a mediator model is wanted; of no named size, its heads cannot even be read."""
    state = tiny_model().state_dict()
    plain = {k: v for k, v in state.items() if not any(s in k for s in ("_bias", "dwc"))}
    torch.save(plain, tmp_path / "dit.pt")
    with pytest.raises(CheckpointError, match="plain .full-attention. DiT/SiT, without mediator attention"):
        medexport.load_checkpoint(tmp_path / "dit.pt")
    dit = medexport.create_model("DiT-S/2", mediators=0, image_size=32)
    torch.save(dit.state_dict(), tmp_path / "dit-s.pt")
    with pytest.raises(NotAMediatorModelError, match="plain .full-attention. DiT/SiT checkpoint, not a mediator"):
        medexport.load_checkpoint(tmp_path / "dit-s.pt", attention="mediator")


def test_missing_and_unexpected_keys(tmp_path):
    state = dict(tiny_model().state_dict())
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        CheckpointError, match=r"missing keys: blocks\.1\.mlp\.fc2\.bias.*unexpected keys: blocks\.0\.extra"
    ):
        medexport.load_checkpoint(tmp_path / "bad.pt")


def test_shapes_that_do_not_fit(tmp_path):
    state = dict(tiny_model().state_dict())
    state["blocks.1.attn.an_bias"] = torch.zeros(4, 9, 7, 7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"shapes that do not fit: blocks\.1\.attn\.an_bias"):
        medexport.load_checkpoint(tmp_path / "bad.pt")


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        medexport.load_checkpoint(tmp_path / "nope.pt")
    path = medexport.save_checkpoint(tiny_model(), tmp_path / "ok.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        medexport.load_checkpoint(tmp_path / "trunc.pt")
    st = medexport.save_checkpoint(tiny_model(), tmp_path / "ok.safetensors", form="safetensors")
    data = st.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        medexport.load_checkpoint(tmp_path / "trunc.safetensors")
    (tmp_path / "notes.txt").write_text("hello, this is not a checkpoint")
    with pytest.raises(CheckpointError, match="neither"):
        medexport.load_checkpoint(tmp_path / "notes.txt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        medexport.load_checkpoint(tmp_path / "empty.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        medexport.load_checkpoint(tmp_path / "list.pt")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_payload_is_refused(tmp_path):
    marker = tmp_path / "payload-ran"
    state = dict(tiny_model().state_dict())
    path = tmp_path / "evil.pt"
    torch.save({"model": state, "ema": state, "args": _Payload(marker)}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="could run code"):
        medexport.load_checkpoint(path)
    assert not marker.exists()


def test_payload_fixture_really_runs_code_when_unpickled(tmp_path):
    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize(
    "n,msg", [(0, "positive integer"), (65, "exceed the 64 tokens"), (13, "1x13 grid, which does not fit")]
)
def test_bad_mediator_counts(n, msg):
    with pytest.raises(ConfigError, match=msg):
        replace(TINY, mediators=n)


def test_bad_image_size_and_name():
    with pytest.raises(ConfigError, match="not a multiple of 16"):
        medexport.create_model("SiT-S/2", mediators=16, image_size=100)
    with pytest.raises(ConfigError, match="unknown model"):
        medexport.create_model("SiT-Q/2", mediators=16)
    assert issubclass(ConfigError, MedexportError)


def test_read_checkpoint_reports_format_and_params(tmp_path):
    model = tiny_model()
    path = medexport.save_checkpoint(model, tmp_path / "t.pt", form="trainer")
    _, info = read_checkpoint(path)
    assert info.format == "trainer" and info.weights == "ema" and info.train_steps == 0
    assert info.num_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s["blocks.0.attn.qkv.weight"].__setitem__((0, 0), float("nan")), "NaN/inf"),
        (lambda s: s["final_layer.linear.bias"].__setitem__(0, float("inf")), "NaN/inf"),
        (lambda s: s.__setitem__("blocks.0.mlp.fc1.bias", s["blocks.0.mlp.fc1.bias"].long()), "torch.int64 values"),
    ],
)
def test_weights_that_would_load_silently_wrong_are_refused(tmp_path, damage, message):
    state = {k: v.clone() for k, v in tiny_model(16).state_dict().items()}
    damage(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=message):
        medexport.load_checkpoint(path)


@pytest.mark.parametrize("form", ["trainer", "state_dict"])
def test_checkpoint_with_a_wrong_crc_is_refused(tmp_path, form):
    path = medexport.save_checkpoint(tiny_model(), tmp_path / "damaged.pt", form=form)
    record = flip_byte_in_record(path)
    assert torch.load(path, weights_only=False)  # torch itself loads the damaged bytes as weights
    for load in (medexport.load_checkpoint, read_checkpoint):
        with pytest.raises(
            CheckpointError,
            match=rf"damaged\.pt.*is damaged: the record '{record}' fails its "
            rf"checksum.*Re-download or re-save",
        ):
            load(path)


def test_checkpoint_saved_without_crcs_still_loads(tmp_path):
    from torch.utils.serialization import config

    model = tiny_model()
    before = config.save.compute_crc32
    config.save.compute_crc32 = False  # records then carry CRC 0: nothing to check, not damage
    try:
        path = medexport.save_checkpoint(model, tmp_path / "nocrc.pt")
    finally:
        config.save.compute_crc32 = before
    torch.testing.assert_close(_outputs(medexport.load_checkpoint(path), TINY), _outputs(model, TINY))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_integer_weights_in_a_trainer_checkpoint_are_refused(tmp_path, dtype):
    state = dict(tiny_model().state_dict())
    state["blocks.0.attn.an_bias"] = state["blocks.0.attn.an_bias"].to(dtype)
    path = tmp_path / "int.pt"
    torch.save({"model": state, "ema": state, "train_steps": 0}, path)
    with pytest.raises(
        CheckpointError,
        match=rf"'blocks\.0\.attn\.an_bias' holds {dtype} values where the model has "
        rf"torch\.float32 weights",
    ):
        medexport.load_checkpoint(path)
