"""The torch-free runtime: numpy and onnxruntime only, the same latents as Pipeline from the same noise."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medexport import Pipeline
from medexport.errors import BundleError, SamplingError, ScheduleError
from medexport.lite import LitePipeline, SampleRequest
from tests.conftest import copy_bundle

REPO = Path(__file__).resolve().parents[2]
LABELS = [1, 2, 3]  # with guidance 6 rows: more than the tiny engines' batch max of 4, so chunks are exercised


@pytest.mark.parametrize(
    "kw",
    [
        dict(sampler="ode", method="euler", steps=7),
        dict(sampler="ode", method="heun", steps=5),
        dict(sampler="sde", method="euler", steps=6),
        dict(sampler="sde", method="heun", steps=4),
        dict(sampler="sde", method="euler", steps=5, last_step="none"),
        dict(sampler="ode", method="euler", steps=9, schedule="adaptive:16,32,64:ratios=0.9,0.5:warmup=2"),
    ],
    ids=lambda kw: "-".join(str(v).split(":")[0] for v in kw.values()),
)
def test_same_request_same_images_as_the_pipeline(tiny_bundle, kw):
    """One sampling core: the same request (seed, guidance, schedule) gives the ODE's images bit for bit and the
    SDE's to float rounding (torch's and numpy's vector sqrt differ in the last bit)."""
    kw = {"cfg_scale": 2.5, "schedule": "16:0.4,32:0.7,64", **kw}
    request = SampleRequest(LABELS, seed=9, **kw)
    want = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime", threads=1).run(request)
    got = LitePipeline.from_bundle(tiny_bundle, threads=1).run(request)
    w = want.latents.numpy()
    assert got.latents.dtype == np.float32 and got.latents.shape == w.shape
    if kw["sampler"] == "ode":
        np.testing.assert_array_equal(got.latents, w)
    else:
        assert np.linalg.norm(got.latents - w) / np.linalg.norm(w) < 1e-5
    assert [(e.step, e.mediators, e.batch) for e in got.trace] == [(e.step, e.mediators, e.batch) for e in want.trace]
    assert got.settings["schedule"] == want.settings["schedule"]


def test_image_seeds_make_each_image_independent_of_its_batch(tiny_bundle):
    pipe = LitePipeline.from_bundle(tiny_bundle, threads=1)
    kw = dict(sampler="sde", steps=4, cfg_scale=2.0)
    both = pipe.sample([1, 2], seed=3, **kw).latents
    seeds = SampleRequest([1, 2], seed=3).row_seeds()
    alone = pipe.sample([2], image_seeds=[seeds[1]], **kw).latents
    np.testing.assert_array_equal(both[1:], alone)


def test_it_runs_where_torch_cannot_be_imported(tiny_bundle):
    script = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnxscript", "polygraphy", "matplotlib"):
                    raise ImportError("not installed here: " + name)
        sys.meta_path.insert(0, NoTorch())
        from medexport.lite import LitePipeline, SampleRequest
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
    with pytest.raises(SamplingError, match="dopri5 method runs on torch"):
        pipe.sample([1], sampler="ode", method="dopri5")
    for bad in (dict(cfg_scale=float("nan")), dict(cfg_channels=0), dict(steps=10**12)):  # one validation, shared
        with pytest.raises(SamplingError):
            pipe.sample([1], **{"sampler": "ode", "method": "euler", "steps": 5, **bad})
    assert pipe.sample([1], seed=-5, sampler="ode", method="euler", steps=3).latents.shape == (1, 4, 16, 16)
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
