"""The torch-free runtime: numpy and onnxruntime only, the same latents as Pipeline from the same noise."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from medexport import Pipeline
from medexport.errors import BundleError, SamplingError, ScheduleError
from medexport.lite import LitePipeline
from tests.conftest import copy_bundle

REPO = Path(__file__).resolve().parents[2]
LABELS = [1, 2, 3]  # with guidance 6 rows: more than the tiny engines' batch max of 4, so chunks are exercised


@pytest.mark.parametrize("kw", [dict(sampler="ode", method="euler", steps=7),
                                dict(sampler="ode", method="heun", steps=5),
                                dict(sampler="sde", method="euler", steps=6),
                                dict(sampler="sde", method="heun", steps=4),
                                dict(sampler="sde", method="euler", steps=5, last_step="none")],
                         ids=lambda kw: "-".join(map(str, kw.values())))
def test_same_latents_as_the_pipeline(tiny_bundle, kw):
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    common = dict(cfg_scale=2.5, schedule="16:0.4,32:0.7,64", **kw)
    want = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime").sample(LABELS, noise=noise, seed=9, **common)
    g = torch.Generator().manual_seed(9)  # the SDE's noise, drawn as the pipeline draws it
    got = LitePipeline.from_bundle(tiny_bundle).sample(LABELS, noise=noise.numpy(), **common,
                                                       noise_fn=lambda shape: torch.randn(shape, generator=g).numpy())
    w = want.latents.numpy()
    assert np.linalg.norm(got.latents - w) / np.linalg.norm(w) < 1e-5
    assert [e["mediators"] for e in got.trace] == [e.mediators for e in want.trace]


def test_it_runs_where_torch_cannot_be_imported(tiny_bundle):
    script = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnxscript", "polygraphy", "matplotlib"):
                    raise ImportError("not installed here: " + name)
        sys.meta_path.insert(0, NoTorch())
        from medexport.lite import LitePipeline
        pipe = LitePipeline.from_bundle({str(tiny_bundle)!r}, threads=1)
        r = pipe.sample([1, 2], seed=0, sampler="sde", steps=5, cfg_scale=2.0, schedule="16:0.5,64")
        assert r.latents.shape == (2, 4, 16, 16) and len(r.trace) == 5
        print("ok", sorted(m for m in ("torch", "onnxscript", "matplotlib") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"


def test_what_it_does_not_run_is_refused(tiny_bundle, tmp_path):
    pipe = LitePipeline.from_bundle(tiny_bundle)
    with pytest.raises(SamplingError, match="fixed-step samplers"):
        pipe.sample([1], sampler="ode", method="dopri5")
    with pytest.raises(ScheduleError, match="adaptive"):
        pipe.sample([1], sampler="ode", method="euler", steps=5, schedule="adaptive:16,64:ratios=0.5")
    with pytest.raises(ScheduleError, match="128"):
        pipe.sample([1], sampler="ode", method="euler", steps=5, schedule="16:0.5,128")
    with pytest.raises(SamplingError, match="labels"):
        pipe.sample([1.5], sampler="ode", method="euler", steps=5)
    with pytest.raises(SamplingError, match="0..9"):
        pipe.sample([10], sampler="ode", method="euler", steps=5)
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    (bundle / "mediators-32.fp32.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="does not match the hash"):
        LitePipeline.from_bundle(bundle)
