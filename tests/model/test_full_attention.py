"""The vanilla twin's model: full self-attention DiT/SiT with timm's parameter names, read off public checkpoints."""

import argparse
import math

import pytest
import torch

import medexport
from medexport.core.config import FULL, ModelConfig
from medexport.errors import CheckpointError, ConfigError, NotAMediatorModelError
from medexport.model import forward_flops, infer_config, load_checkpoint
from tests.conftest import TINY, model_inputs, tiny_model

TINY_FULL = ModelConfig(**{**TINY.__dict__, "mediators": FULL, "attention": "full"})


def timm_attention(attn, x):
    """timm's Attention without the fused kernel (DiT's reference): softmax(q k^T / sqrt(d)) v, then proj."""
    B, N, D = x.shape
    H = attn.num_heads
    qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // H), dim=-1)
    return (a @ v).transpose(1, 2).reshape(B, N, D) @ attn.proj.weight.T + attn.proj.bias


def test_full_attention_is_timms():
    model = medexport.create_model(TINY_FULL, seed=0, init="random")
    attn = model.blocks[0].attn
    x = torch.randn(2, TINY.num_tokens, TINY.hidden_size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(attn(x), timm_attention(attn, x), rtol=1e-5, atol=1e-6)
    assert not any(k.endswith(("an_bias", "dwc.weight")) for k in model.state_dict())


def test_config_rules():
    with pytest.raises(ConfigError, match="has no mediators"):
        ModelConfig(**{**TINY.__dict__, "attention": "full"})  # 16 mediators with full attention
    with pytest.raises(ConfigError, match="attention must be one of"):
        ModelConfig(**{**TINY.__dict__, "attention": "linear"})
    assert TINY.with_mediators(FULL) == TINY_FULL and TINY_FULL.with_mediators(16) == TINY
    assert "attention" not in TINY.to_dict() and TINY_FULL.to_dict()["attention"] == "full"
    # FLOPs: the full model's own count is the mediator config's "full" figure
    assert forward_flops(TINY_FULL) == forward_flops(TINY, attention="full") > forward_flops(TINY)


def test_public_dit_state_dict_reads_as_full_attention(tmp_path):
    """A DiT-S/2 state dict as facebookresearch/DiT saves it (torch.save of the state dict, pos_embed included):
    its heads come from the named size, and it loads with every weight in place."""
    model = medexport.create_model("DiT-S/2", mediators=FULL, image_size=64, seed=0, init="random")
    torch.save(model.state_dict(), tmp_path / "DiT-S-2-64.pt")
    loaded = load_checkpoint(tmp_path / "DiT-S-2-64.pt")
    assert loaded.config == model.config and loaded.config.num_heads == 6
    x, t, y = model_inputs(model.config)
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_trainer_args_name_the_heads(tmp_path):
    cfg = infer_config(medexport.create_model("SiT-S/2", mediators=FULL, image_size=64).state_dict())
    assert cfg.num_heads == 6
    state = tiny_model(FULL, attention="full").state_dict()
    with pytest.raises(CheckpointError, match="number of heads cannot be read"):
        infer_config(state)
    with pytest.raises(
        CheckpointError, match=r"says it holds SiT-B/2 \(12 blocks of width 768\).*2 blocks of width 64"
    ):
        infer_config(state, "SiT-B/2")
    # the reference trainer's checkpoint names its model in args.model
    model = medexport.create_model("SiT-S/2", mediators=FULL, image_size=32, seed=0, init="random")
    path = medexport.save_checkpoint(model, tmp_path / "v.pt", form="trainer", args=argparse.Namespace(model="SiT-S/2"))
    assert load_checkpoint(path).config == model.config


def test_safetensors_record_their_heads(tmp_path):
    model = tiny_model(FULL, attention="full")
    path = medexport.save_checkpoint(model, tmp_path / "v.safetensors", form="safetensors")
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    x, t, y = model_inputs(model.config)
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)


def test_attention_expectations(tmp_path):
    vanilla = medexport.save_checkpoint(
        tiny_model(FULL, attention="full"), tmp_path / "v.safetensors", form="safetensors"
    )
    mediator = medexport.save_checkpoint(tiny_model(16), tmp_path / "m.pt")
    with pytest.raises(NotAMediatorModelError, match="plain .*full-attention.*--attention full --checkpoint"):
        load_checkpoint(vanilla, attention="mediator")
    with pytest.raises(CheckpointError, match="16-mediator model, not a full-attention.*--checkpoint 16="):
        load_checkpoint(mediator, attention="full")
    state = dict(tiny_model(16).state_dict())
    for k in [k for k in state if k.endswith("an_bias")]:
        del state[k]
    torch.save(state, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="some of the mediator-attention parameters but not"):
        load_checkpoint(tmp_path / "half.pt")
