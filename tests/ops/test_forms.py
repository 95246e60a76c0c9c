"""The CUDA op's choice of form per shape, from the measured table; each form checked on the CPU."""

import json

import pytest
import torch

from medexport.ops import mediator_attention_reference
from medexport.ops.kernels import forms
from medexport.ops.kernels.forms import FormTable, choose, sdpa_mediator_attention, shipped_table


def operands(B=2, H=4, N=64, n=16, d=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, d, generator=g, dtype=dtype) for _ in range(3))
    m = torch.randn(B, H, n, d, generator=g, dtype=dtype)
    return q, k, v, m, torch.randn(H, n, N, generator=g), torch.randn(H, N, n, generator=g), d**-0.5


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_the_sdpa_form_is_the_op(dtype, tol):
    ins = operands(dtype=dtype)
    truth = mediator_attention_reference(*(t.double() for t in ins[:6]), ins[6])
    out = sdpa_mediator_attention(*ins)
    assert out.dtype == dtype and out.is_contiguous()
    assert ((out.double() - truth).abs().max() / truth.abs().max()).item() < tol


def test_the_shipped_table_is_the_h200_measurement():
    table = shipped_table()
    assert table is not None and table.gpu == "NVIDIA H200" and table.dtype == "bfloat16"
    assert len(table.rows) == 27 and "RESULTS.md" in table.source
    # what the measurement said: two SDPA calls win at 256 tokens, batch 2; the fused kernel at 4096, batch 32, n 16
    assert table.choose(256, 16, 32, 72) == "sdpa"
    assert table.choose(4096, 16, 512, 72) == "triton"


def test_choose_takes_the_nearest_measured_shape_and_keeps_the_kernel_elsewhere():
    table = FormTable.from_dict(
        {
            "gpu": "GPU X",
            "dtype": "bfloat16",
            "rows": [
                {"tokens": 256, "mediators": 16, "batch_heads": 32, "head_dim": 72, "ms": {"triton": 2.0, "sdpa": 1.0}},
                {
                    "tokens": 4096,
                    "mediators": 64,
                    "batch_heads": 512,
                    "head_dim": 72,
                    "ms": {"triton": 1.0, "split": 3.0},
                },
            ],
        }
    )
    assert table.choose(300, 16, 32, 72) == "sdpa" and table.choose(3000, 32, 256, 72) == "triton"
    q, _, _, m, *_ = operands(B=2, H=16, N=256, n=16, d=72, dtype=torch.bfloat16)
    assert choose(q, m, table) == "sdpa"  # a CPU tensor: no GPU name to compare
    assert choose(q.float(), m.float(), table) == "triton"  # a dtype the table does not hold
    assert FormTable.from_dict(table.to_dict()) == table


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"rows": "x"}, "an object with"),
        ({"rows": [{"tokens": 1}]}, "row 0 of the form table is malformed"),
        (
            {"rows": [{"tokens": 1, "mediators": 1, "batch_heads": 1, "head_dim": 1, "ms": {"triton": -1}}]},
            "no positive",
        ),
    ],
)
def test_bad_tables(bad, message):
    with pytest.raises(ValueError, match=message):
        FormTable.from_dict(bad)


def test_an_unreadable_shipped_table_falls_back_to_the_kernel(tmp_path, monkeypatch, caplog):
    path = tmp_path / "forms.json"
    path.write_text(json.dumps({"rows": "broken"}))
    monkeypatch.setattr(forms, "TABLE_FILE", path)
    forms.shipped_table.cache_clear()
    try:
        assert shipped_table() is None and "uses the fused kernel for every shape" in caplog.text
        q, _, _, m, *_ = operands(dtype=torch.bfloat16)
        assert choose(q, m) == "triton"
    finally:
        forms.shipped_table.cache_clear()


def test_the_cuda_implementation_dispatches_to_the_chosen_form(monkeypatch):
    """The op's CUDA implementation, called on CPU tensors: the sdpa and reference forms run anywhere."""
    pytest.importorskip("triton")
    from medexport.ops import kernels

    q, k, v, m, bias_mk, bias_qm, scale = operands(B=2, H=16, N=256, n=16, d=72, dtype=torch.bfloat16)
    ins = (q, k, v, m, bias_mk.bfloat16(), bias_qm.bfloat16(), scale)  # the model casts its biases to q's dtype
    for form, fn in (("sdpa", sdpa_mediator_attention), ("reference", mediator_attention_reference)):
        monkeypatch.setattr(forms, "choose", lambda q, m, table=None, form=form: form)
        torch.testing.assert_close(kernels._cuda_triton_impl(*ins), fn(*ins), rtol=0, atol=0)
