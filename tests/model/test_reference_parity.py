"""A checkpoint written the way the reference trainer writes it loads and reproduces the reference outputs."""

import argparse

import pytest
import torch

import medexport
from tests import reference_impl as ref

CASES = [  # (input_size, patch, hidden, heads, depth, agent_num, learn_sigma)
    (16, 2, 64, 4, 2, 16, True),
    (16, 2, 64, 4, 2, 4, False),
    (32, 4, 96, 6, 2, 64, True),
    (16, 2, 72, 2, 3, 64, True),  # head dim 36, all 64 tokens as mediators
]


@pytest.mark.parametrize("input_size,patch,hidden,heads,depth,agents,learn_sigma", CASES)
def test_trainer_checkpoint_reproduces_reference(
    tmp_path, input_size, patch, hidden, heads, depth, agents, learn_sigma
):
    torch.manual_seed(0)
    reference = ref.SiT(
        input_size=input_size,
        patch_size=patch,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        num_classes=10,
        learn_sigma=learn_sigma,
        agent_num=agents,
    )
    ref.randomize(reference, seed=1)
    ema = ref.SiT(
        input_size=input_size,
        patch_size=patch,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        num_classes=10,
        learn_sigma=learn_sigma,
        agent_num=agents,
    )
    ref.randomize(ema, seed=2)
    args = argparse.Namespace(
        model="SiT-XL/2",
        image_size=input_size * 8,
        num_classes=10,
        epochs=1400,
        global_batch_size=256,
        results_dir="results",
        ckpt=None,
    )
    path = tmp_path / "0100000.pt"
    torch.save(
        {
            "model": reference.state_dict(),
            "ema": ema.state_dict(),
            "opt": {"state": {}},
            "train_steps": 100000,
            "args": args,
            "epoch": 3,
        },
        path,
    )

    model = medexport.load_checkpoint(path)
    assert model.checkpoint_info.format == "trainer" and model.checkpoint_info.weights == "ema"
    c = model.config
    assert (
        c.depth,
        c.hidden_size,
        c.num_heads,
        c.patch_size,
        c.input_size,
        c.mediators,
        c.num_classes,
        c.learn_sigma,
    ) == (depth, hidden, heads, patch, input_size, agents, 10, learn_sigma)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, input_size, input_size, generator=g)
    t = torch.tensor([0.0, 0.37, 0.999])
    y = torch.tensor([0, 7, 10])
    ema.eval()
    with torch.no_grad():
        want = ema(x, t, y)
        got = model(x, t, y)
        rel = (got - want).abs().max() / want.abs().max()
        assert rel < 1e-5, f"ema weights: relative error {rel:.2e}"
        model_w = medexport.load_checkpoint(path, weights="model")
        rel_m = (model_w(x, t, y) - reference.eval()(x, t, y)).abs().max() / want.abs().max()
        assert rel_m < 1e-5
        # Guidance as the reference does it (3 channels), even-sized batch [cond; uncond].
        xc = torch.cat([x[:2], x[:2]])
        yc = torch.tensor([1, 2, 10, 10])
        tc = torch.full((4,), 0.5)
        torch.testing.assert_close(
            model.forward_with_cfg(xc, tc, yc, 4.0), ema.forward_with_cfg(xc, tc, yc, 4.0), rtol=1e-5, atol=1e-6
        )


def test_pos_embed_matches_reference_table():
    from medexport.model.mediator_dit import sincos_pos_embed

    for dim, grid in ((64, 8), (1152, 16), (96, 4)):
        torch.testing.assert_close(
            torch.from_numpy(sincos_pos_embed(dim, grid)),
            torch.from_numpy(ref.get_2d_sincos_pos_embed(dim, grid)).float(),
        )
