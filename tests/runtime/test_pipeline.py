"""The Pipeline: engines and PyTorch give the same latents; schedules serve the steps they name; bad input."""

import json

import pytest
import torch

from medexport import Pipeline
from medexport.backend import Runner
from medexport.errors import SamplingError, ScheduleError
from medexport.runtime import AdaptiveSchedule
from tests.conftest import COUNTS, TINY, tiny_model

CASES = [
    dict(sampler="ode", method="euler", steps=6, cfg_scale=1.0, schedule="16:0.3,32:0.7,64"),
    dict(sampler="sde", method="euler", steps=6, cfg_scale=4.0, schedule="16:0.5,64"),
    dict(sampler="sde", method="heun", steps=4, cfg_scale=1.5, schedule="32"),
    dict(sampler="ode", method="heun", steps=5, cfg_scale=4.0, cfg_channels="all", schedule="16:0.5,32"),
    dict(sampler="ode", method="euler", steps=10, cfg_scale=4.0, schedule="adaptive:16,32,64:ratios=0.95,0.9:warmup=2"),
    dict(
        sampler="sde",
        method="euler",
        steps=8,
        cfg_scale=1.0,
        schedule="adaptive:16,64:ratios=0.95:warmup=2:distance=mse",
    ),
    dict(
        sampler="ode",
        method="euler",
        steps=10,
        cfg_scale=4.0,
        schedule="adaptive:16,32,64:ratios=0.97,0.9:warmup=2:per-sample",
    ),
]


@pytest.fixture(scope="module")
def pipelines(tiny_bundle):
    return {
        "onnxruntime": Pipeline.from_bundle(tiny_bundle, backend="onnxruntime"),
        "torch": Pipeline.from_bundle(tiny_bundle, backend="torch"),
    }


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c['sampler']}-{c['method']}-cfg{c['cfg_scale']}-{c['schedule'][:8]}"
)
def test_onnxruntime_and_pytorch_pipelines_agree(pipelines, case):
    results = {k: p.sample([1, 7, 3], seed=5, **case) for k, p in pipelines.items()}
    a, b = results["onnxruntime"].latents, results["torch"].latents
    assert a.shape == (3, 4, 16, 16)
    rel = (a - b).abs().max() / b.abs().max()
    assert rel < 1e-4, f"relative difference {rel:.2e}"
    ta, tb = results["onnxruntime"].trace, results["torch"].trace
    assert [(e.step, e.mediators) for e in ta] == [(e.step, e.mediators) for e in tb]
    assert {e.backend for e in ta} == {"onnxruntime"} and {e.backend for e in tb} == {"torch"}
    assert all(e.ms > 0 for e in ta)


def test_from_checkpoints_equals_bundle_reference(pipelines, tiny_checkpoints):
    pipe = Pipeline.from_checkpoints(dict(tiny_checkpoints))
    kw = dict(sampler="ode", method="euler", steps=5, cfg_scale=2.0, schedule="16:0.5,64")
    torch.testing.assert_close(
        pipe.sample([2, 4], seed=1, **kw).latents,
        pipelines["torch"].sample([2, 4], seed=1, **kw).latents,
        rtol=0,
        atol=0,
    )


def test_fixed_schedule_serves_exactly_the_steps_it_names(pipelines):
    pipe = pipelines["torch"]
    r = pipe.sample([0], seed=0, sampler="ode", method="euler", steps=11, schedule="16:0.3,32:0.7,64")
    # 10 steps, progress i/10: 0..2 -> 16, 3..6 -> 32, 7..9 -> 64
    assert [e.mediators for e in r.trace] == [16] * 3 + [32] * 4 + [64] * 3
    assert [e.step for e in r.trace] == list(range(10))
    assert r.steps_per_count() == {16: 3, 32: 4, 64: 3}
    r = pipe.sample([0], seed=0, sampler="sde", steps=250, schedule="16:0.3,32:0.7,64")
    assert len(r.trace) == 250 and r.steps_per_count() == {16: 75, 32: 100, 64: 75}
    r = pipe.sample([0], seed=0, sampler="ode", method="euler", steps=8)
    assert len(r.trace) == 7 and r.steps_per_count() == {64: 7}  # default: the largest count alone


def test_guidance_doubles_the_engine_batch_and_trace_times(pipelines):
    r = pipelines["torch"].sample([1, 2], seed=0, sampler="ode", method="euler", steps=4, cfg_scale=4.0)
    assert [e.batch for e in r.trace] == [4, 4, 4]
    assert [round(e.t, 4) for e in r.trace] == [0.0, 0.3333, 0.6667]


def test_adaptive_schedule_switches_and_is_recorded(pipelines):
    sched = AdaptiveSchedule((16, 32, 64), ratios=(0.99, 0.98), warmup=2)
    r = pipelines["torch"].sample([3], seed=0, sampler="ode", method="euler", steps=12, schedule=sched)
    used = [e.mediators for e in r.trace]
    assert used[:3] == [16, 16, 16]  # warm-up steps and the step after stay on the first model
    assert used == sorted(used)  # switches only go forward
    assert [s.after_step for s in sched.switches] == [i for i in range(len(used) - 1) if used[i] != used[i + 1]]


def test_seed_and_noise(pipelines):
    pipe = pipelines["torch"]
    kw = dict(sampler="sde", steps=5)
    a, b = pipe.sample([1], seed=3, **kw).latents, pipe.sample([1], seed=3, **kw).latents
    assert torch.equal(a, b)
    assert not torch.equal(a, pipe.sample([1], seed=4, **kw).latents)
    noise = torch.randn(2, 4, 16, 16)
    kw = dict(sampler="ode", method="euler", steps=4, cfg_scale=3.0)
    r1 = pipe.sample([1, 2], noise=noise, **kw).latents
    r2 = pipe.sample([1, 2], noise=noise.clone(), seed=99, **kw).latents
    torch.testing.assert_close(r1, r2)


def test_batch_outside_engine_range_is_split(pipelines):
    # the engines accept 1..4; 3 labels with guidance make batches of 6
    kw = dict(sampler="ode", method="euler", steps=3, cfg_scale=2.0, schedule="32")
    a = pipelines["onnxruntime"].sample([1, 2, 3], seed=0, **kw).latents
    b = pipelines["torch"].sample([1, 2, 3], seed=0, **kw).latents
    assert (a - b).abs().max() / b.abs().max() < 1e-4


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(labels=[10]), SamplingError, "outside 0..9"),
        (dict(labels=[-1]), SamplingError, "outside 0..9"),
        (dict(labels=[]), SamplingError, "no labels"),
        (dict(labels=[1], schedule="16:0.5,128"), ScheduleError, "128"),
        (dict(labels=[1], schedule="16:0.7,32:0.3,64"), ScheduleError, "fractions must increase"),
        (dict(labels=[1], schedule="16;0.5"), ScheduleError, "character"),
        (dict(labels=[1], steps=1), SamplingError, "steps"),
        (dict(labels=[1], cfg_scale=0.5), SamplingError, "below 1"),
        (dict(labels=[1], noise=torch.zeros(2, 4, 16, 16)), SamplingError, "noise must be"),
        (
            dict(labels=[1], sampler="ode", method="dopri5", schedule="adaptive:16,32:ratios=0.5"),
            SamplingError,
            "fixed-step",
        ),
    ],
)
def test_bad_input_is_refused_before_any_work(tiny_bundle, kwargs, error, message):
    calls = []

    class Counting(Runner):
        backend = "counting"

        def infer(self, x, t, y):
            calls.append(1)
            return torch.zeros_like(x)

    pipe = Pipeline({n: Counting(n) for n in COUNTS}, TINY)
    with pytest.raises(error, match=message):
        pipe.sample(**kwargs)
    assert calls == []


def test_nan_from_an_engine_names_step_and_engine():
    class Broken(Runner):
        backend = "broken"

        def infer(self, x, t, y):
            return torch.full_like(x, float("nan")) if t[0] > 0.5 else torch.zeros_like(x)

    pipe = Pipeline({16: Broken(16), 64: Broken(64)}, TINY)
    with pytest.raises(SamplingError, match=r"broken engine for 64 mediators produced NaN/inf at step 3"):
        pipe.sample([1], sampler="ode", method="euler", steps=6, schedule="16:0.5,64")


@pytest.mark.parametrize(
    "labels, seed, message",
    [
        ([1.5, 2], 0, "must be integers"),
        (["shirt"], 0, "must be integers"),
        ("1,2", 0, "list of integer class labels"),
        (torch.tensor([1.0]), 0, "float32 tensor"),
        ([True], 0, "must be integers"),
        ([1], 1.5, "seed must be an integer"),
        ([1], 2**64, "seed must be an integer"),
        ([], 0, "no labels"),
    ],
)
def test_wrong_types_into_the_api(labels, seed, message):
    pipe = Pipeline.from_models({16: tiny_model(16)}, device="cpu")
    with pytest.raises(SamplingError, match=message):
        pipe.sample(labels, seed=seed, sampler="ode", method="euler", steps=3)


def test_integer_like_labels_and_an_int_schedule_are_fine():
    import numpy as np

    pipe = Pipeline.from_models({16: tiny_model(16)}, device="cpu")
    r = pipe.sample(np.array([1, 2]), seed=np.int64(3), sampler="ode", method="euler", steps=3, schedule=16)
    assert r.latents.shape[0] == 2 and r.settings["schedule"] == "16"


@pytest.mark.parametrize(
    "device, error",
    [("meta", "not supported"), ("tpu", "unknown device"), ("garbage", "unknown device"), ("cuda:7", "CUDA GPU")],
)
def test_devices_that_do_not_exist_are_refused(tiny_bundle, device, error):
    from medexport.errors import MedexportError

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(MedexportError, match=error):
        Pipeline.from_bundle(tiny_bundle, device=device)


def test_a_request_is_a_json_round_trip_and_runs_like_the_keyword_form():
    from medexport.core.request import SampleRequest

    pipe = Pipeline.from_models({16: tiny_model(16), 32: tiny_model(32)}, device="cpu")
    request = SampleRequest([1, 2], seed=5, sampler="ode", method="euler", steps=4, cfg_scale=2.0, schedule="16:0.5,32")
    again = SampleRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request
    by_request = pipe.run(again)
    by_keywords = pipe.sample(
        [1, 2], seed=5, sampler="ode", method="euler", steps=4, cfg_scale=2.0, schedule="16:0.5,32"
    )
    assert torch.equal(by_request.latents, by_keywords.latents)
    assert [e.mediators for e in by_request.trace] == [e.mediators for e in by_keywords.trace]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"labels": [1], "guidance": 4}, "unknown request field"),
        ({"seed": 1}, "needs 'labels'"),
        ([1, 2], "a JSON object"),
        ({"labels": [1], "check_finite": "yes"}, "check_finite must be true or false"),
    ],
)
def test_bad_requests_say_what_is_wrong(data, message):
    from medexport.core.request import SampleRequest

    with pytest.raises(SamplingError, match=message):
        SampleRequest.from_dict(data)


def test_warmup_opens_every_engine_before_the_first_step(tiny_bundle):
    """After warmup() no engine is opened during a run: every count's session exists, and a run's first call to
    each count (the one after a switch) finds it, at the batch size the request uses."""
    from medexport.core.request import SampleRequest

    pipe = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime", threads=1)
    assert all(r.session is None for r in pipe.runners.values())  # opened on first use, as before
    request = SampleRequest(
        [1, 2, 3], seed=0, sampler="ode", method="euler", steps=5, cfg_scale=2.0, schedule="16:0.3,32:0.6,64"
    )
    seconds = pipe.warmup(request)
    assert sorted(seconds) == pipe.counts and all(s > 0 for s in seconds.values())
    sessions = {n: r.session for n, r in pipe.runners.items()}
    assert all(s is not None for s in sessions.values())
    result = pipe.run(request)
    assert {n: r.session for n, r in pipe.runners.items()} == sessions  # none was opened again
    assert {e.batch for e in result.trace} == {6}  # the size warmed: 3 images, doubled by guidance


def test_warmup_runs_each_engine_twice_per_batch():
    """ONNX Runtime plans a shape's memory on the first run and uses the plan from the second: the warm-up makes
    both, so a run's first call to a count is a steady one."""
    import numpy as np

    from medexport.core.arrays import NUMPY
    from medexport.core.sampling import WARMUP_CALLS, ModelShape, warmup

    calls = []

    def forward(n):
        def f(x, t, y):
            calls.append((n, x.shape[0]))
            return np.zeros_like(x)

        return f

    warmup({4: forward(4), 16: forward(16)}, xp=NUMPY, shape=ModelShape(1, 8, 10), batches=[6, 2, 6])
    assert WARMUP_CALLS == 2
    assert sorted(calls) == sorted([(n, b) for n in (4, 16) for b in (2, 6) for _ in range(WARMUP_CALLS)])


def test_warmup_refuses_batches_that_are_not_batch_sizes(tiny_bundle):
    """``warmup(batches=[-2])`` once died in numpy ("negative dimensions are not allowed"); every bad value is now
    a SamplingError naming ``batches``, before any engine runs or opens."""
    from medexport.core.request import SampleRequest
    from medexport.lite import LitePipeline

    pipe = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime", threads=1)
    lite = LitePipeline.from_bundle(tiny_bundle, threads=1)
    for bad, message in (
        ([-2], r"got \[-2\]"),
        ([4, 0], r"got \[0\]"),
        ([1.5], r"got \[1.5\]"),
        ([True], r"got \[True\]"),
        ([], "got an empty list"),
        ([1 << 22], r"got \[4194304\]"),
        (4, "must be a list of batch sizes"),
        ("8", "must be a list of batch sizes"),
    ):
        for p in (pipe, lite):
            with pytest.raises(SamplingError, match=rf"^batches .*{message}"):
                p.warmup(batches=bad)
    with pytest.raises(SamplingError, match="a request or batches to warm up at, not both"):
        pipe.warmup(SampleRequest([1]), batches=[2])
    with pytest.raises(SamplingError, match="expected a SampleRequest to warm up for, got list"):
        pipe.warmup([1, 2])
    assert all(r.session is None for r in pipe.runners.values())  # refused before any engine was opened
    assert sorted(pipe.warmup(batches=(1, 3))) == pipe.counts  # a tuple of sizes is fine
