"""Fixed and adaptive mediator schedules: which count serves which step, parsing, and the adaptive rule."""

from collections import Counter

import numpy as np
import pytest

from medexport.core.arrays import NUMPY
from medexport.core.samplers import sample as core_sample
from medexport.core.schedule import AdaptiveSchedule, FixedSchedule, Switch
from medexport.core.schedule_text import parse_schedule
from medexport.core.settings import SamplingSettings
from medexport.core.steps import StepInfo
from medexport.errors import ScheduleError


def sample(velocity, x0, settings, *, seed=None, on_step=None):
    """The core sampler on numpy arrays (the SDE's noise from a seeded numpy generator)."""
    rng = np.random.default_rng(seed)
    return core_sample(
        NUMPY, velocity, x0, settings, on_step=on_step, noise=lambda shape: rng.standard_normal(shape, dtype=np.float32)
    )


def served(schedule, num_steps):
    return [schedule.model_for(StepInfo(i, num_steps, 0.0, i / num_steps)) for i in range(num_steps)]


# ---------------------------------------------------------------------------------------------------------
# Fixed schedules


@pytest.mark.parametrize(
    "num_steps, want",
    [
        (250, {16: 75, 32: 100, 64: 75}),
        (10, {16: 3, 32: 4, 64: 3}),
        (50, {16: 15, 32: 20, 64: 15}),
        (7, {16: 3, 32: 2, 64: 2}),  # 3/7 > 0.3 is the first step past 30%
    ],
)
def test_fixed_schedule_serves_the_steps_it_names(num_steps, want):
    schedule = parse_schedule("16:0.3,32:0.7,64")
    got = served(schedule, num_steps)
    assert Counter(got) == want == schedule.steps_per_count(num_steps)
    assert got == sorted(got, key=schedule.counts.index)  # in order, one segment after the other


def test_fixed_schedule_drives_a_sampler():
    schedule = parse_schedule("16:0.3,32:0.7,64")
    used = []

    def velocity(x, t, step):
        used.append(schedule.model_for(step))
        return -x

    sample(
        velocity, np.random.default_rng(0).standard_normal((2, 3), dtype=np.float32), SamplingSettings(steps=10), seed=0
    )
    assert used == [16] * 3 + [32] * 4 + [64] * 3  # 9 stochastic steps + the last step, served by 64
    used.clear()
    sample(
        velocity,
        np.random.default_rng(1).standard_normal((2, 3), dtype=np.float32),
        SamplingSettings("ode", method="heun", steps=11),
    )
    assert used == [16] * 6 + [32] * 8 + [64] * 6  # 10 steps of two evaluations


def test_boundary_on_a_step_is_exact():
    # Step 5 of 10 has progress exactly 0.5: it belongs to the next segment, with no float surprise.
    assert served(parse_schedule("16:0.5,64"), 10) == [16] * 5 + [64] * 5
    assert served(parse_schedule("16:0.1,32:0.2,64"), 10) == [16, 32] + [64] * 8


def test_static_schedule():
    schedule = parse_schedule("64")
    assert schedule == FixedSchedule.static(64) == FixedSchedule((64,))
    assert schedule.counts == (64,) and str(schedule) == "64"
    assert set(served(schedule, 13)) == {64}


def test_fixed_schedule_with_unknown_step_count_uses_time():
    # dopri5's velocity calls: num_steps None, progress = t.
    schedule = parse_schedule("16:0.3,32:0.7,64")
    by_t = {t: schedule.model_for(StepInfo(0, None, t, t)) for t in (0.0, 0.29, 0.3, 0.69, 0.7, 1.0)}
    assert by_t == {0.0: 16, 0.29: 16, 0.3: 32, 0.69: 32, 0.7: 64, 1.0: 64}


@pytest.mark.parametrize("text", ["16:0.3,32:0.7,64", "64", "8:0.25,64", "16:0.125,32:0.5,64:0.875,128"])
def test_fixed_text_round_trips(text):
    schedule = parse_schedule(text)
    assert str(schedule) == text
    assert parse_schedule(str(schedule)) == schedule


def test_fixed_parse_tolerates_spaces():
    assert parse_schedule(" 16 : 0.3 , 32:0.7, 64 ") == FixedSchedule((16, 32, 64), (0.3, 0.7))


@pytest.mark.parametrize(
    "text, position, words",
    [
        ("16:0.3,32:0.x,64", 11, ["segment 2", "'0.x' is not a number"]),
        ("16:0.7,32:0.3,64", 11, ["segment 2", "increase"]),
        ("16:0.3,32:0.3,64", 11, ["segment 2", "increase"]),
        ("16:0.3,16:0.7,64", 8, ["segment 2", "16 appears twice"]),
        ("16:0.3,32:0.7,64:0.9", 18, ["segment 3", "last", "runs to the end"]),
        ("16,32", 3, ["segment 1", "has no fraction"]),
        ("16:1.5,64", 4, ["segment 1", "not in (0, 1)"]),
        ("16:0,64", 4, ["segment 1", "not in (0, 1)"]),
        ("0:0.5,64", 1, ["segment 1", "not a positive integer"]),
        ("x16:0.5,64", 1, ["segment 1", "not a positive integer"]),
        ("16:0.5,,64", 8, ["segment 2", "empty"]),
        ("16:0.5,-64", 8, ["segment 2", "not a positive integer"]),
    ],
)
def test_fixed_parse_errors_say_where(text, position, words):
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text)
    message = str(info.value)
    assert f"at character {position}:" in message
    for word in words:
        assert word in message
    caret_line = message.splitlines()[2]
    assert caret_line.index("^") - 4 == position - 1  # the caret sits under the character named


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_schedule_is_refused(text):
    with pytest.raises(ScheduleError, match="empty"):
        parse_schedule(text)


@pytest.mark.parametrize(
    "counts, boundaries, match",
    [
        ((), (), "at least one"),
        ((16, 32), (), "boundary"),
        ((16, 32), (0.5, 0.7), "boundary"),
        ((16, 16), (0.5,), "twice"),
        ((16, 32, 64), (0.7, 0.3), "increase"),
        ((16, 0), (0.5,), "full-attention model of a vanilla twin.*cannot share a schedule"),
        ((16, -1), (0.5,), "positive integers"),
        ((16, 32), (1.0,), r"\(0, 1\)"),
    ],
)
def test_fixed_constructor_validates(counts, boundaries, match):
    with pytest.raises(ScheduleError, match=match):
        FixedSchedule(counts, boundaries)


def test_counts_missing_from_the_bundle_are_refused():
    schedule = parse_schedule("16:0.3,32:0.7,64")
    schedule.validate_against([16, 32, 64, 128])
    with pytest.raises(ScheduleError) as info:
        schedule.validate_against({64, 16})
    message = str(info.value)
    assert "32" in message.split("which the bundle lacks")[0] and "has 16, 64" in message
    with pytest.raises(ScheduleError, match="uses mediator count"):
        parse_schedule("adaptive:16,32:ratios=0.5").validate_against([32])


# ---------------------------------------------------------------------------------------------------------
# Adaptive schedules: trajectories made of constant moves, so each d_i is known.


def run_adaptive(schedule, moves, shape=(2, 3)):
    """Step i adds moves[i] to every element (or moves[i][b] to row b); returns the counts that served each step."""
    x = np.zeros(shape, dtype=np.float64)
    schedule.reset(x)
    n, got = len(moves), []
    for i, move in enumerate(moves):
        info = StepInfo(i, n, 0.0, i / n)
        got.append(schedule.models_for(info) if schedule.per_sample else schedule.model_for(info))
        move = np.asarray(move, dtype=np.float64)
        x = x + (move.reshape(-1, *([1] * (len(shape) - 1))) if move.ndim else move)
        schedule.observe(info, x)
    return got


def test_warmup_mean_and_first_switch():
    s = AdaptiveSchedule((16, 32, 64), (0.5, 0.2), warmup=3)
    moves = [9.0, 1.0, 2.0, 3.0, 1.5, 1.2, 0.9, 0.5, 0.3, 0.3, 0.3]
    got = run_adaptive(s, moves)
    assert s.d0 == pytest.approx(2.0)  # (1 + 2 + 3) / 3: step 0 is not part of the warm-up
    assert s.distances == pytest.approx(moves)
    # d_6 = 0.9 < 0.5 * 2 is the first step under r1 * D0: 32 serves from step 7; d_8 = 0.3 < 0.2 * 2: 64 from 9.
    assert got == [16] * 7 + [32] * 2 + [64] * 2
    assert s.switches == [Switch(6, 16, 32), Switch(8, 32, 64)]


def test_no_switch_during_warmup():
    s = AdaptiveSchedule((16, 32, 64), (0.5, 0.2), warmup=3)
    got = run_adaptive(s, [1.0, 5.0, 0.0, 4.0, 3.0, 2.9, 0.1])  # step 2 does not move at all
    assert s.d0 == pytest.approx(3.0)
    assert got[:6] == [16] * 6 and got[6] == 16  # d_4 = 3, d_5 = 2.9: no switch; the switch comes after step 6
    assert s.switches == [Switch(6, 16, 32), Switch(6, 32, 64)]


def test_both_switches_after_one_step_and_the_last_step_is_served_by_the_last_model():
    s = AdaptiveSchedule((16, 32, 64), (0.5, 0.2), warmup=2)
    got = run_adaptive(s, [5.0, 1.0, 1.0, 0.1, 0.1, 0.1])
    assert got == [16, 16, 16, 16, 64, 64]  # d_3 = 0.1 < 0.2 * 1: m1 -> m2 -> m3 after step 3
    assert s.switches == [Switch(3, 16, 32), Switch(3, 32, 64)]


def test_switch_needs_strictly_less():
    s = AdaptiveSchedule((16, 32), (0.5,), warmup=2)
    got = run_adaptive(s, [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.0])  # D0 = 1.0 exactly
    assert got == [16] * 6 + [32]  # 0.5 is not < 0.5 * 1.0; 0.25 is


def test_two_counts_never_go_further():
    s = AdaptiveSchedule((32, 64), (0.5,), warmup=1)
    assert run_adaptive(s, [1.0, 1.0, 0.1, 0.0, 0.0]) == [32, 32, 32, 64, 64]


def test_mse_and_mae_decide_differently():
    moves = [3.0, 2.0, 2.0, 1.2, 1.2]
    mae = AdaptiveSchedule((16, 32), (0.5,), warmup=2, distance="mae")
    mse = AdaptiveSchedule((16, 32), (0.5,), warmup=2, distance="mse")
    assert run_adaptive(mae, moves) == [16] * 5  # 1.2 is not < 0.5 * 2
    assert run_adaptive(mse, moves) == [16] * 4 + [32]  # 1.44 < 0.5 * 4
    assert mse.d0 == pytest.approx(4.0)


def test_batch_mode_uses_one_distance_over_the_whole_state():
    s = AdaptiveSchedule((16, 32), (0.5,), warmup=1)
    moves = [[1.0, 1.0], [2.0, 0.0], [0.4, 1.2]]  # per row; the batch sees the mean: 1, 1, 0.8
    assert run_adaptive(s, moves) == [16, 16, 16]
    assert s.distances == pytest.approx([1.0, 1.0, 0.8])


def test_per_sample_mode_decides_per_row():
    s = AdaptiveSchedule((16, 32, 64), (0.5, 0.2), warmup=2, per_sample=True)
    moves = [
        [9.0, 9.0, 9.0],
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0],
        [0.4, 0.1, 1.0],  # row 0 -> 32, row 1 -> 32 -> 64, row 2 stays
        [0.1, 0.1, 0.6],  # row 0 -> 64
        [0.1, 0.1, 0.1],  # row 2 -> 32 -> 64
        [0.0, 0.0, 0.0],
    ]
    got = run_adaptive(s, moves, shape=(3, 2, 2))
    assert got == [[16] * 3] * 4 + [[32, 64, 16], [64, 64, 16], [64, 64, 64]]
    np.testing.assert_allclose(s.d0, np.ones(3))
    assert Switch(3, 32, 64, sample=1) in s.switches and Switch(5, 16, 32, sample=2) in s.switches
    with pytest.raises(RuntimeError, match="models_for"):
        s.model_for(StepInfo(0, 7, 0.0, 0.0))


def test_adaptive_drives_a_sampler_through_on_step():
    # An Euler ODE whose velocity moves every element by moves[i] in step i: the sampler's on_step feeds the
    # schedule, and the velocity asks it which count serves the step.
    moves = [5.0, 1.0, 1.0, 1.0, 0.8, 0.3, 0.1, 0.1]
    settings = SamplingSettings("ode", method="euler", steps=len(moves) + 1)
    dts = (settings.time_grid()[1:] - settings.time_grid()[:-1]).tolist()
    schedule = parse_schedule("adaptive:16,32,64:ratios=0.5,0.2:warmup=3")
    used = []

    def velocity(x, t, step):
        used.append(schedule.model_for(step))
        return np.full_like(x, moves[step.index] / dts[step.index])

    x0 = np.zeros((2, 4, 2, 2), dtype=np.float32)
    schedule.reset(x0)
    sample(velocity, x0, settings, on_step=schedule.observe)
    assert used == [16] * 6 + [32] + [64]  # d_5 = 0.3 < 0.5 * 1; d_6 = 0.1 < 0.2 * 1


def test_adaptive_refuses_dopri5_steps_and_misuse():
    s = AdaptiveSchedule((16, 32), (0.5,))
    with pytest.raises(RuntimeError, match="reset"):
        s.model_for(StepInfo(0, 10, 0.0, 0.0))
    s.reset(np.zeros((2, 3)))
    with pytest.raises(ScheduleError, match="fixed-step sampler"):
        s.model_for(StepInfo(0, None, 0.0, 0.0))
    with pytest.raises(RuntimeError, match="expected step 0"):
        s.observe(StepInfo(1, 10, 0.0, 0.1), np.zeros((2, 3)))
    with pytest.raises(ScheduleError, match="shape"):
        s.observe(StepInfo(0, 10, 0.0, 0.0), np.zeros((4, 3)))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (((16,), ()), {}, "2 or 3"),
        (((16, 32, 64, 128), (0.5, 0.4, 0.3)), {}, "2 or 3"),
        (((16, 16), (0.5,)), {}, "twice"),
        (((16, 32), (0.5, 0.2)), {}, "1 ratio"),
        (((16, 32, 64), (0.5,)), {}, "2 ratio"),
        (((16, 32, 64), (0.2, 0.5)), {}, "r1 > r2"),
        (((16, 32, 64), (0.5, 0.5)), {}, "r1 > r2"),
        (((16, 32), (0.0,)), {}, "> 0"),
        (((16, 32), (0.5,)), {"warmup": 0}, "warmup"),
        (((16, 32), (0.5,)), {"distance": "l1"}, "distance"),
    ],
)
def test_adaptive_constructor_validates(args, kwargs, match):
    with pytest.raises(ScheduleError, match=match):
        AdaptiveSchedule(*args, **kwargs)


@pytest.mark.parametrize(
    "text",
    [
        "adaptive:16,32,64:ratios=0.5,0.2:warmup=3:distance=mae",
        "adaptive:16,32:ratios=0.25:warmup=5:distance=mse:per-sample",
    ],
)
def test_adaptive_text_round_trips(text):
    schedule = parse_schedule(text)
    assert isinstance(schedule, AdaptiveSchedule) and schedule.adaptive
    assert str(schedule) == text and parse_schedule(str(schedule)) == schedule


def test_adaptive_text_defaults_and_spellings():
    s = parse_schedule("Adaptive:16,32,64:ratios=0.5,0.2")
    assert (s.counts, s.ratios, s.warmup, s.distance, s.per_sample) == ((16, 32, 64), (0.5, 0.2), 3, "mae", False)
    s = parse_schedule("adaptive:16,32:per_sample:distance=MSE:ratios=0.5:warmup=2")
    assert (s.per_sample, s.distance, s.warmup) == (True, "mse", 2)


@pytest.mark.parametrize(
    "text, words",
    [
        ("adaptive", ["counts are missing"]),
        ("adaptive:16,x:ratios=0.5", ["character 13", "'x' is not a positive integer"]),
        ("adaptive:16,16:ratios=0.5", ["character 13", "16 appears twice"]),
        ("adaptive:16,32", ["ratios are missing"]),
        ("adaptive:16,32:ratios=0.5,y", ["character 27", "'y' is not a number"]),
        ("adaptive:16,32:ratios=0.5:warmup=x", ["character 34", "warmup 'x'"]),
        ("adaptive:16,32:ratios=0.5:distance=l2", ["character 36", "unknown distance"]),
        ("adaptive:16,32:ratios=0.5:speed=2", ["character 27", "unknown option"]),
        ("adaptive:16,32:ratios=0.5:warmup=2:warmup=3", ["character 36", "given twice"]),
        ("adaptive:16,32,64:ratios=0.2,0.5", ["r1 > r2"]),
    ],
)
def test_adaptive_parse_errors(text, words):
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text)
    for word in words:
        assert word in str(info.value)
