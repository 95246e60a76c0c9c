"""The samplers against hand-written float64 loops of the spec's formulas, closed forms and torchdiffeq."""

import math

import numpy as np
import pytest
import torch

from medexport.errors import MedexportError, SamplingError
from medexport.runtime import NonFiniteError, SamplingSettings, StepInfo, sample

SHAPE = (3, 4, 2, 2)  # (B, C, H, W): small, but shaped like a latent


def field(x, t):
    """A smooth, nonlinear velocity field; t is a (B,) tensor or a 0-d one."""
    t = t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t
    return torch.sin(x) * (1 + t) - 0.5 * x + 0.3 * torch.cos(3 * t)


def as_velocity(fn, calls=None):
    def velocity(x, t, step):
        if calls is not None:
            calls.append((step, t.clone()))
        return fn(x, t)

    return velocity


def noise(seed=0, dtype=torch.float64):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# Reference loops, written from the formulas of SiT's transport code in float64 (scalar times, no shared code with the package).


def ref_sde(v, x, *, steps, method="euler", last_step="mean", size=0.04, norm=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    end = 1 - size if last_step != "none" else 1 - 1e-3
    grid = torch.linspace(0, end, steps, dtype=torch.float32).double()  # the reference's float32 grid
    dt = grid[1] - grid[0]

    def w(t):
        return norm * (1 - t)

    def f(x, t):
        vel = v(x, t)
        return vel + w(t) * (t * vel - x) / (1 - t)

    for t in grid[:-1]:
        z = torch.randn(x.shape, generator=g, dtype=torch.float32).double()
        if method == "euler":
            x = x + f(x, t) * dt + math.sqrt(2 * w(t)) * math.sqrt(dt) * z
        else:
            xhat = x + math.sqrt(2 * w(t)) * math.sqrt(dt) * z
            k1 = f(xhat, t)
            xp = xhat + dt * k1
            k2 = f(xp, t + dt)
            x = xhat + dt / 2 * (k1 + k2)
    t = torch.tensor(1 - size, dtype=torch.float32).double()
    if last_step == "mean":
        x = x + f(x, t) * size
    elif last_step == "euler":
        x = x + v(x, t) * size
    elif last_step == "tweedie":
        score = (t * v(x, t) - x) / (1 - t)
        x = x / t + (1 - t) ** 2 / t * score
    return x


def ref_ode(v, x, *, steps, method):
    grid = torch.linspace(0, 1, steps, dtype=torch.float32).double()
    for t0, t1 in zip(grid[:-1], grid[1:]):
        dt = t1 - t0
        k1 = v(x, t0)
        if method == "euler":
            x = x + dt * k1
        elif method == "midpoint":
            x = x + dt * v(x + dt / 2 * k1, t0 + dt / 2)
        else:
            k2 = v(x + dt * k1, t1)
            x = x + dt / 2 * (k1 + k2)
    return x


# ---------------------------------------------------------------------------------------------------------
# SDE


# The package keeps the reference's float32 grid, dt and sqrt(dt); the float64 loop takes sqrt in float64, so
# the two differ by float32 rounding of sqrt(dt) (relative 6e-8) on the noise term.
SDE_TOL = dict(atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("last_step", ["mean", "euler", "tweedie", "none"])
def test_sde_matches_reference_loop(method, last_step):
    settings = SamplingSettings("sde", method=method, steps=12, last_step=last_step)
    x0 = noise()
    got = sample(as_velocity(field), x0, settings, generator=torch.Generator().manual_seed(7))
    want = ref_sde(field, x0, steps=12, method=method, last_step=last_step, seed=7)
    torch.testing.assert_close(got, want, **SDE_TOL)


def sit_order_sde(model, x, *, steps, size=0.04):
    """Euler-Maruyama and the "Mean" last step with SiT's float32 order of operations (noise from the global
    generator, the model called once for the velocity and once more inside the score, as the reference does)."""
    grid = torch.linspace(0, 1 - size, steps)
    dt = grid[1] - grid[0]

    def expand(t):
        return t.view(-1, *([1] * (x.ndim - 1)))

    def drift(x, t):
        te = expand(t)
        sigma, d_sigma = 1 - te, -1
        var = sigma**2 - (te / 1) * d_sigma * sigma
        score = ((te / 1) * model(x, t) - x) / var
        return model(x, t) + 1.0 * sigma * score

    for ti in grid[:-1]:
        dw = torch.randn(x.size()).to(x) * torch.sqrt(dt)
        t = torch.ones(x.size(0)).to(x) * ti
        mean_x = x + drift(x, t) * dt
        x = mean_x + torch.sqrt(2 * (1.0 * (1 - expand(t)))) * dw
    return x + drift(x, torch.ones(x.size(0)) * (1 - size)) * size


def test_sde_float32_reproduces_the_reference_bit_for_bit():
    x0 = noise().float()
    torch.manual_seed(4)
    want = sit_order_sde(field, x0, steps=30)
    torch.manual_seed(4)
    got = sample(as_velocity(field), x0, SamplingSettings(steps=30))
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_sde_diffusion_norm_and_last_step_size():
    settings = SamplingSettings("sde", steps=9, last_step_size=0.1, diffusion_norm=0.5)
    x0 = noise()
    got = sample(as_velocity(field), x0, settings, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, ref_sde(field, x0, steps=9, size=0.1, norm=0.5, seed=3), **SDE_TOL)


def test_sde_float32_state_close_to_float64():
    x0 = noise()
    settings = SamplingSettings(steps=20)
    got = sample(as_velocity(field), x0.float(), settings, generator=torch.Generator().manual_seed(1))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_sde(field, x0, steps=20, seed=1), atol=1e-5, rtol=1e-5)


def test_sde_zero_norm_is_the_euler_ode_on_the_sde_grid():
    # Without diffusion the drift is the velocity and the noise is multiplied by 0.
    settings = SamplingSettings("sde", steps=10, diffusion_norm=0.0, last_step="euler")
    x0 = noise()
    got = sample(as_velocity(field), x0, settings, generator=torch.Generator().manual_seed(0))
    grid = torch.linspace(0, 0.96, 10, dtype=torch.float32).double()
    x = x0
    for t in grid[:-1]:
        x = x + field(x, t) * (grid[1] - grid[0])
    x = x + field(x, grid[-1]) * 0.04
    torch.testing.assert_close(got, x, atol=1e-12, rtol=1e-12)


def test_tweedie_last_step_is_the_denoised_estimate():
    # On the Linear path x / t + (1 - t)^2 / t * s = x + (1 - t) v: the Euler last step to t = 1 exactly.
    x0 = noise()
    kw = dict(steps=6, diffusion_norm=0.0)
    tweedie = sample(as_velocity(field), x0, SamplingSettings(last_step="tweedie", **kw))
    euler = sample(as_velocity(field), x0, SamplingSettings(last_step="euler", **kw))
    torch.testing.assert_close(tweedie, euler, atol=1e-6, rtol=0)  # the float32 t = 0.96 is not exactly 1 - 0.04


@pytest.mark.parametrize(
    "settings, evaluations",
    [
        (SamplingSettings(), 250),  # the reference default: Euler-Maruyama, 250 steps, last step "mean"
        (SamplingSettings(steps=10, method="heun"), 2 * 9 + 1),
        (SamplingSettings(steps=10, last_step="none"), 9),
        (SamplingSettings(steps=10, method="heun", last_step="none"), 18),
        (SamplingSettings("ode", method="euler", steps=8), 7),
        (SamplingSettings("ode", method="heun", steps=8), 14),
    ],
)
def test_evaluation_counts(settings, evaluations):
    calls = []
    sample(as_velocity(field, calls), torch.randn(2, 4), settings, generator=torch.Generator().manual_seed(0))
    assert len(calls) == evaluations == settings.num_evaluations


def test_sde_step_info_and_on_step():
    calls, steps_seen = [], []
    settings = SamplingSettings(steps=6)
    x0 = noise()
    final = sample(
        as_velocity(field, calls),
        x0,
        settings,
        generator=torch.Generator().manual_seed(0),
        on_step=lambda info, x: steps_seen.append((info, x.clone())),
    )
    grid = torch.linspace(0, 0.96, 6, dtype=torch.float32)
    infos = [info for info, _ in steps_seen]
    assert [i.index for i in infos] == list(range(6))  # 5 stochastic steps + the "mean" step
    assert all(i.num_steps == 6 == settings.num_model_steps for i in infos)
    assert [i.progress for i in infos] == [k / 6 for k in range(6)]
    assert [i.t for i in infos[:5]] == [float(t) for t in grid[:5]]
    assert infos[5].t == pytest.approx(0.96)
    assert [c[0] for c in calls] == infos  # the velocity sees the same StepInfo as on_step
    for info, t in calls:
        assert t.shape == (SHAPE[0],) and t.dtype == x0.dtype
        assert torch.all(t == torch.tensor(info.t, dtype=torch.float32).double())
    torch.testing.assert_close(steps_seen[-1][1], final, atol=0, rtol=0)


def test_heun_second_evaluation_is_at_the_step_end():
    calls = []
    sample(
        as_velocity(field, calls),
        noise(),
        SamplingSettings(steps=5, method="heun", last_step="none"),
        generator=torch.Generator().manual_seed(0),
    )
    grid = torch.linspace(0, 0.999, 5, dtype=torch.float32).double()
    times = [float(t[0]) for _, t in calls]
    assert times[0::2] == pytest.approx([float(t) for t in grid[:-1]])
    assert times[1::2] == pytest.approx([float(t) for t in grid[1:]])


def test_same_seed_same_samples_different_seed_different():
    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return sample(as_velocity(field), noise(), SamplingSettings(steps=8), generator=generator)

    torch.testing.assert_close(run(5), run(5), atol=0, rtol=0)
    assert not torch.allclose(run(5), run(6))


def test_without_a_generator_the_global_rng_draws_the_noise():
    def run():
        torch.manual_seed(11)
        return sample(as_velocity(field), noise(), SamplingSettings(steps=8))

    torch.testing.assert_close(run(), run(), atol=0, rtol=0)
    want = sample(as_velocity(field), noise(), SamplingSettings(steps=8), generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(run(), want, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# ODE


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint"])
def test_ode_fixed_step_matches_reference_loop(method):
    x0 = noise()
    got = sample(as_velocity(field), x0, SamplingSettings("ode", method=method, steps=9))
    torch.testing.assert_close(got, ref_ode(field, x0, steps=9, method=method), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("method, solver", [("euler", "euler"), ("heun", "heun2"), ("midpoint", "midpoint")])
def test_ode_fixed_step_matches_torchdiffeq_bit_for_bit(method, solver):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    x0 = noise().float()
    got = sample(as_velocity(field), x0, SamplingSettings("ode", method=method, steps=11))
    grid = torch.linspace(0, 1, 11)  # what the reference hands to odeint

    def fn(t, x):
        return field(x, torch.ones(x.shape[0]) * t)

    want = torchdiffeq.odeint(fn, x0, grid, method=solver)[-1]
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def linear_solution(x0, a, c, t=1.0):
    """dx/dt = a x + c from x0 at 0: x(t) = (x0 + c / a) e^(a t) - c / a."""
    return (x0 + c / a) * math.exp(a * t) - c / a


@pytest.mark.parametrize("method, steps, tol", [("euler", 201, 2e-2), ("heun", 51, 2e-4), ("midpoint", 51, 2e-4)])
def test_ode_fixed_step_converges_on_a_linear_field(method, steps, tol):
    a, c = -1.3, 0.7
    x0 = noise()
    got = sample(lambda x, t, s: a * x + c, x0, SamplingSettings("ode", method=method, steps=steps))
    err = (got - linear_solution(x0, a, c)).abs().max().item()
    assert err < tol
    # First / second order: twice the steps, half / a quarter of the error.
    finer = sample(lambda x, t, s: a * x + c, x0, SamplingSettings("ode", method=method, steps=2 * steps - 1))
    ratio = err / (finer - linear_solution(x0, a, c)).abs().max().item()
    assert ratio == pytest.approx(2 if method == "euler" else 4, rel=0.05)


def test_a_sampler_is_one_registered_file():
    """The registry owns each sampler's facts: the settings, the evaluation count, tune's step search and the
    torch-free runtime read them from the sampler's own class (midpoint: one file, nothing else names it)."""
    from medexport.core import samplers
    from medexport.core.arrays import NUMPY
    from medexport.core.settings import METHODS
    from medexport.tune import step_grid

    assert METHODS["ode"] == ("euler", "heun", "midpoint", "dopri5") and samplers.fixed_methods("sde") == (
        "euler",
        "heun",
    )
    s = SamplingSettings("ode", method="midpoint", steps=8)
    assert (s.evaluations_per_step, s.num_model_steps, s.num_evaluations) == (2, 7, 14)
    assert ("midpoint", 8) in step_grid(s, steps=[8], methods=["midpoint"])
    with pytest.raises(
        SamplingError,
        match="unknown sde method 'midpoint': choose one of euler, heun "
        r"\(midpoint is an ode method: use --sampler ode\)",
    ):
        SamplingSettings("sde", method="midpoint")
    x = np.ones((2, 3), np.float32)  # the numpy core runs it: dx/dt = -x, one midpoint step of 1/2
    got = samplers.sample(NUMPY, lambda x, t, step: -x, x, SamplingSettings("ode", method="midpoint", steps=3))
    np.testing.assert_allclose(got, (1 - 0.5 + 0.125) ** 2 * x, rtol=1e-6)


def test_dopri5_converges_on_a_linear_field():
    pytest.importorskip("torchdiffeq")
    a, c = 1.1, -0.4
    x0 = noise()
    got = sample(lambda x, t, s: a * x + c, x0, SamplingSettings("ode", atol=1e-9, rtol=1e-9))
    torch.testing.assert_close(got, linear_solution(x0, a, c), atol=1e-7, rtol=1e-7)
    default = sample(lambda x, t, s: a * x + c, x0, SamplingSettings("ode"))  # atol 1e-6, rtol 1e-3
    torch.testing.assert_close(default, linear_solution(x0, a, c), atol=1e-2, rtol=1e-2)


def test_dopri5_step_info_and_trace():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    calls, seen = [], []
    x0 = noise().float()
    settings = SamplingSettings("ode", steps=5)
    got = sample(as_velocity(field, calls), x0, settings, on_step=lambda info, x: seen.append(info))
    assert settings.num_model_steps is None and settings.num_evaluations is None
    assert [info.index for info, _ in calls] == list(range(len(calls)))
    assert all(info.num_steps is None and 0 <= info.progress <= 1 for info, _ in calls)
    assert all(info.progress == min(max(info.t, 0.0), 1.0) for info, _ in calls)
    assert [(s.index, s.num_steps) for s in seen] == [(i, 4) for i in range(4)]
    # The output points do not steer dopri5: the end state is the one of a solve over [0, 1], here written
    # as the reference's ``_fn`` (float32 state, so the same arithmetic bit for bit).
    direct = torchdiffeq.odeint(
        lambda t, x: field(x, torch.ones(x.shape[0]) * t),
        x0,
        torch.tensor([0.0, 1.0]),
        method="dopri5",
        atol=1e-6,
        rtol=1e-3,
    )[-1]
    torch.testing.assert_close(got, direct, atol=0, rtol=0)


def test_dopri5_without_torchdiffeq_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    with pytest.raises(SamplingError, match="pip install torchdiffeq"):
        sample(as_velocity(field), noise(), SamplingSettings("ode"))


def test_ode_step_info():
    calls, seen = [], []
    sample(
        as_velocity(field, calls),
        noise(),
        SamplingSettings("ode", method="heun", steps=5),
        on_step=lambda info, x: seen.append(info),
    )
    assert [(s.index, s.num_steps, s.progress) for s in seen] == [(i, 4, i / 4) for i in range(4)]
    assert [info for info, _ in calls] == [s for s in seen for _ in range(2)]


# ---------------------------------------------------------------------------------------------------------
# Failures and settings


@pytest.mark.parametrize(
    "settings",
    [SamplingSettings(steps=10), SamplingSettings("ode", method="euler", steps=10), SamplingSettings("ode", steps=10)],
)
def test_non_finite_state_names_the_step(settings):
    def velocity(x, t, step):
        v = field(x, t)
        return v * math.inf if step.t > 0.5 else v

    with pytest.raises(NonFiniteError) as info:
        sample(velocity, noise(), settings, generator=torch.Generator().manual_seed(0))
    err = info.value
    assert isinstance(err, SamplingError) and isinstance(err, MedexportError)
    assert err.t > 0.5 and f"step {err.step}" in str(err)
    if settings.num_model_steps is not None:
        grid = settings.time_grid()
        assert err.step == int(np.nonzero(grid[:-1] > 0.5)[0][0])  # the first step whose velocity was infinite


def test_velocity_of_the_wrong_shape_is_refused():
    with pytest.raises(SamplingError, match="shaped like its input"):
        sample(lambda x, t, s: torch.cat([x, x], 1), noise(), SamplingSettings(steps=4))


def test_x0_must_be_floating_point():
    with pytest.raises(SamplingError, match="floating-point"):
        sample(as_velocity(field), torch.zeros(2, 3, dtype=torch.int64), SamplingSettings(steps=4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=1), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(steps=True), "steps"),
        (dict(sampler="ddim"), "sampler"),
        (dict(sampler="sde", method="dopri5"), "sde method"),
        (dict(sampler="ode", method="rk4"), "ode method"),
        (dict(last_step="midpoint"), "last step"),
        (dict(last_step_size=0.0), "last_step_size"),
        (dict(last_step_size=1.0), "last_step_size"),
        (dict(last_step_size=float("nan")), "last_step_size"),
        (dict(diffusion_norm=-1.0), "diffusion_norm"),
        (dict(atol=0.0), "atol"),
        (dict(rtol=-1e-3), "rtol"),
        (dict(sampler=3), "sampler"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(SamplingError, match=match):
        SamplingSettings(**kwargs)


def test_settings_defaults_and_resolution():
    sde = SamplingSettings()
    assert (sde.resolved_method, sde.resolved_steps) == ("euler", 250)
    assert sde.num_model_steps == sde.num_evaluations == 250
    assert sde.grid_end == pytest.approx(0.96)
    ode = SamplingSettings("ode")
    assert (ode.resolved_method, ode.resolved_steps) == ("dopri5", 50)
    assert ode.num_model_steps is None and ode.evaluations_per_step is None
    assert SamplingSettings("ode", method="heun", steps=8).num_model_steps == 7
    assert SamplingSettings(method="heun", steps=8).evaluations_per_step == 2
    assert SamplingSettings(steps=8, last_step="none").num_model_steps == 7
    assert SamplingSettings(steps=8, last_step="none").grid_end == pytest.approx(0.999)
    # The reference's spellings are accepted and stored in lower case.
    assert SamplingSettings("SDE", method="Heun", last_step="Mean") == SamplingSettings(
        "sde", method="heun", last_step="mean"
    )
    # None is "not chosen": the reference's default once resolved; a method alone is checked once its sampler is.
    assert SamplingSettings(last_step=None).resolved().last_step == "mean"
    with pytest.raises(SamplingError, match="sde method"):
        SamplingSettings(method="dopri5").resolved()
    grid = SamplingSettings(steps=250).time_grid()
    assert grid.dtype == np.float32 and len(grid) == 250 and float(grid[-1]) == pytest.approx(0.96)


@pytest.mark.parametrize("steps", [2, 3, 6, 17, 18, 30, 50, 251, 1000])
@pytest.mark.parametrize("end", [1.0, 0.96, 0.999, 0.9])
def test_the_grid_is_torchs_linspace_bit_for_bit(steps, end):
    from medexport.core.settings import linspace_f32

    np.testing.assert_array_equal(linspace_f32(end, steps), torch.linspace(0, end, steps, dtype=torch.float32).numpy())


def test_step_info_is_frozen():
    info = StepInfo(0, 10, 0.0, 0.0)
    with pytest.raises(AttributeError):
        info.index = 1
