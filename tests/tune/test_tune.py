"""``medexport tune``: exact costs before running, the budget's edge, the search, the report, and bad input."""

import json

import pytest
from click.testing import CliRunner

from medexport import Pipeline
from medexport.cli import cli
from medexport.core.schedule_text import parse_schedule
from medexport.core.settings import SamplingSettings
from medexport.core.steps import StepInfo
from medexport.judge import JudgeError
from medexport.tune import (
    Budget,
    TuneError,
    allocation_schedule,
    check_budget_args,
    edge_allocations,
    evaluation_steps,
    tune,
)
from tests.conftest import copy_bundle

SAMPLING = SamplingSettings(sampler="ode", method="euler", steps=9, cfg_scale=2.0, cfg_channels="all")


@pytest.mark.parametrize("total", [5, 9, 19, 50, 249])
def test_allocations_round_trip_through_the_schedule_text(total):
    counts = [16, 32, 64]
    for alloc in (
        [1, 1, total - 2],
        [total // 3, total // 3, total - 2 * (total // 3)],
        [0, 2, total - 2],
        [total - 1, 0, 1],
        [total, 0, 0],
    ):
        sched = parse_schedule(allocation_schedule(counts, alloc, total))
        served = [sched.model_for(StepInfo(i, total, 0.0, i / total)) for i in range(total)]
        assert [served.count(n) for n in counts] == alloc


def test_the_dry_run_lists_every_evaluation():
    assert len(evaluation_steps(SamplingSettings(sampler="ode", method="euler", steps=9))) == 8
    heun = evaluation_steps(SamplingSettings(sampler="ode", method="heun", steps=9))
    assert len(heun) == 16 and heun[0].index == heun[1].index == 0  # two evaluations per Heun step
    with pytest.raises(TuneError, match="fixed-step sampler"):
        evaluation_steps(SamplingSettings(sampler="ode", method="dopri5"))


def test_the_edge_holds_the_costliest_allocations_that_fit():
    weights = [1.0, 2.0, 4.0]  # cost per step of each count

    def fits(alloc):
        return sum(w * k for w, k in zip(weights, alloc)) <= 40

    edge = edge_allocations(3, 12, fits)
    assert edge and all(fits(a) and sum(a) == 12 for a in edge)
    for a in edge:  # one more step to the largest count no longer fits
        if a[1] > 0:
            assert not fits([a[0], a[1] - 1, a[2] + 1])


def test_tune_finds_a_schedule_within_the_budget(tiny_bundle):
    pipe = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime")
    result = tune(pipe, SAMPLING, Budget("fraction", 0.93), metric="trajectory", images=4, batch=4)
    assert result.best.gflops <= 0.93 * result.reference_gflops + 1e-9
    assert result.best.measured_gflops == pytest.approx(result.best.gflops, rel=1e-6)  # predicted = measured
    kinds = {c.kind for c in result.candidates}
    assert kinds == {"static", "fixed", "adaptive"}
    largest = next(c for c in result.candidates if c.schedule == "64")
    assert largest.trajectory == 0.0
    assert all(c.trajectory > 0 for c in result.candidates if c.schedule != "64" and c.steps_per_count.get(64, 0) < 8)
    report = result.to_dict()
    assert report["schedule"] == result.best.schedule and report["gflops_per_image"] > 0
    assert report["frontier"] and "trajectory" in report["quality"]
    parse_schedule(report["schedule"]).validate_against(pipe.counts)  # pasteable as it is


def test_bad_budgets_and_bundles(tiny_bundle, tiny_checkpoints, tmp_path):
    pipe = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime")
    with pytest.raises(TuneError, match="below the cheapest schedule: the static 16 mediators cost 82.0%"):
        tune(pipe, SAMPLING, Budget("fraction", 0.5), metric="trajectory", images=2, batch=2)
    with pytest.raises(JudgeError, match="does not apply"):
        tune(pipe, SAMPLING, Budget("fraction", 0.9), metric="judge", images=2, batch=2)
    with pytest.raises(TuneError, match="exactly one budget"):
        check_budget_args(1.0, 2.0, None)
    with pytest.raises(TuneError, match=r"in \(0, 1\] of a reference cost \(the recommended settings' GFLOPs when"):
        check_budget_args(None, None, 1.5)
    for gflops, ms in ((0.0, None), (None, -3.0)):
        with pytest.raises(TuneError, match="must be positive"):
            check_budget_args(gflops, ms, None)
    from medexport.bundle import BuildSettings, ModelSource, build_bundle
    from medexport.core.batch import BatchRange

    one = tmp_path / "one"
    build_bundle(
        [ModelSource(16, checkpoint=tiny_checkpoints[16])],
        one,
        BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)),
        show_progress=False,
    )
    with pytest.raises(TuneError, match="one mediator count"):
        tune(Pipeline.from_bundle(one), SAMPLING, Budget("fraction", 0.9), images=2, batch=2)


def test_the_cli_reports_plots_and_records(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    report = tmp_path / "tune.json"
    r = CliRunner().invoke(
        cli,
        [
            "tune",
            str(bundle),
            "--budget-fraction",
            "0.93",
            "--images",
            "4",
            "--batch",
            "4",
            "--sampler",
            "ode",
            "--method",
            "euler",
            "--steps",
            "9",
            "--cfg-scale",
            "2",
            "--no-adaptive",
            "--report",
            str(report),
            "--record",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert data["metric"] == "trajectory" and data["schedule"] in r.output and "frontier" in data
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Pipeline.from_bundle(bundle).defaults.schedule == data["schedule"]  # recorded as the default
    r = CliRunner().invoke(
        cli,
        [
            "tune",
            str(bundle),
            "--budget-fraction",
            "0.3",
            "--images",
            "2",
            "--steps",
            "5",
            "--sampler",
            "ode",
            "--method",
            "euler",
        ],
    )
    assert r.exit_code == 1 and "below the cheapest schedule" in r.output and "Traceback" not in r.output


def test_a_latency_budget_uses_the_step_times_measured_here(tiny_bundle):
    pipe = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime")
    result = tune(pipe, SAMPLING, Budget("ms", 1e6), metric="trajectory", images=2, batch=2, adaptive=False)
    assert result.best.schedule == "64"  # no limit: the largest count's own samples are the best
    fixed = [c for c in result.candidates if c.kind == "fixed"]
    assert fixed and all(c.predicted_ms is not None and c.predicted_ms > 0 for c in fixed)
    with pytest.raises(TuneError, match="below the cheapest schedule.*ms / image"):
        tune(pipe, SAMPLING, Budget("ms", 1e-6), metric="trajectory", images=2, batch=2)


def test_record_refuses_a_bundle_rebuilt_while_it_was_judged(tiny_bundle, tiny_checkpoints, tmp_path, monkeypatch):
    """tune judged the old engines: its choice is not recorded as the default of the rebuilt bundle."""
    import medexport
    import medexport.tune
    from medexport.bundle import BuildSettings, ModelSource, build_bundle
    from medexport.core.batch import BatchRange
    from tests.conftest import tiny_model

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    other16 = medexport.save_checkpoint(tiny_model(16, seed=99), tmp_path / "other-m16.pt", form="trainer")
    real_tune = medexport.tune.tune

    def tune_during_a_rebuild(*args, **kwargs):
        result = real_tune(*args, **kwargs)
        sources = [
            ModelSource(16, checkpoint=other16),
            *(ModelSource(n, checkpoint=tiny_checkpoints[n]) for n in (32, 64)),
        ]
        build_bundle(
            sources, bundle, BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)), show_progress=False
        )  # another process rebuilds the bundle meanwhile
        return result

    monkeypatch.setattr(medexport.tune, "tune", tune_during_a_rebuild)
    before = json.loads((bundle / "manifest.json").read_text())["sampling"]
    args = [
        "tune",
        str(bundle),
        "--budget-fraction",
        "0.93",
        "--images",
        "2",
        "--batch",
        "2",
        "--sampler",
        "ode",
        "--method",
        "euler",
        "--steps",
        "5",
        "--no-adaptive",
        "--report",
        str(tmp_path / "tune.json"),
        "--record",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert "changed while it was being judged" in r.output and "nothing was recorded" in r.output
    assert "Run the command again on the bundle as it is now" in r.output and "Traceback" not in r.output
    assert json.loads((bundle / "manifest.json").read_text())["sampling"] == before

    monkeypatch.setattr(medexport.tune, "tune", real_tune)  # untouched while judged: recorded
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert (
        Pipeline.from_bundle(bundle).defaults.schedule == json.loads((tmp_path / "tune.json").read_text())["schedule"]
    )


def test_the_bundle_path_prints_as_text_not_markup(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd[").mkdir()
    copy_bundle(tiny_bundle, tmp_path / "odd[" / "]b")
    r = CliRunner().invoke(
        cli,
        [
            "tune",
            "odd[/]b",
            "--budget-fraction",
            "0.93",
            "--images",
            "2",
            "--batch",
            "2",
            "--sampler",
            "ode",
            "--method",
            "euler",
            "--steps",
            "5",
            "--no-adaptive",
            "--report",
            "tune.json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "odd[/]b:" in r.output and "Traceback" not in r.output


def test_the_steps_are_searched_with_the_schedule(tiny_bundle):
    """A step search: every (method, steps) pair judged, the best within a fraction of the recommended cost."""
    from medexport.tune import CostModel

    pipe = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime")
    recommended = SAMPLING.override(schedule="16:0.5,64")
    search = [("euler", 5), ("euler", 9), ("heun", 5)]
    result = tune(
        pipe,
        recommended,
        Budget("fraction", 0.8),
        metric="trajectory",
        images=2,
        batch=2,
        adaptive=False,
        search=search,
    )
    rec_cost = CostModel(pipe, recommended.resolved(), 2.0).gflops_per_image(parse_schedule("16:0.5,64"))
    assert result.reference_gflops == pytest.approx(rec_cost)
    assert result.best.gflops <= 0.8 * rec_cost * (1 + 1e-9)
    # heun 5 costs what euler 9 does, where nothing fits 80%: priced before running, it is not run at all;
    # euler 9 runs its largest static schedule only, the trajectory reference
    assert {(c.method, c.steps) for c in result.candidates} == {("euler", 5), ("euler", 9)}
    assert [c.schedule for c in result.candidates if c.steps == 9] == ["64"]
    # a step search is coarser per step count: at most 4 edge schedules and the best one's 2 neighbours
    assert len([c for c in result.candidates if c.steps == 5 and c.kind == "fixed"]) <= 6
    # the reference is the largest count at the most evaluations (heun 5: 8 evaluations, euler 9: 8; the first)
    assert [c for c in result.candidates if c.trajectory == 0.0][0].schedule == "64"
    report = result.to_dict()
    assert report["steps"] == result.best.steps and report["method"] == result.best.method
    assert report["steps_searched"] == [list(k) for k in result.steps_searched] and "recommended" in report["reference"]
    for c in result.candidates:  # each candidate's cost is its own steps' cost
        evals = len(evaluation_steps(SamplingSettings(sampler="ode", method=c.method, steps=c.steps)))
        assert sum(c.steps_per_count.values()) <= evals
    with pytest.raises(
        TuneError,
        match=r"below the cheapest \(schedule x steps\) combination: the static 16 "
        r"mediators at euler 5 steps cost .*--search-steps",
    ):
        tune(pipe, recommended, Budget("fraction", 0.1), metric="trajectory", images=2, batch=2, search=search)


def test_the_step_grid():
    from medexport.tune import step_grid

    ode = SamplingSettings(sampler="ode", method="euler", steps=20)
    grid = step_grid(ode)
    assert [k for m, k in grid if m == "euler"] == [8, 10, 12, 14, 17, 20] and {m for m, _ in grid} == {"euler", "heun"}
    assert step_grid(ode, [4, 6], ["heun"]) == [("heun", 4), ("heun", 6)]
    with pytest.raises(TuneError, match="fixed-step methods; dopri5"):
        step_grid(ode, methods=["dopri5"])
    with pytest.raises(TuneError, match="step counts in 2..100000"):
        step_grid(ode, [1, 5])
    with pytest.raises(TuneError, match="--search-methods names no method: give at least one of the ode sampler's"):
        step_grid(ode, [4, 6], [])  # not "no step search": an empty list searched nothing


def test_an_empty_search_is_refused_before_any_work(tmp_path, monkeypatch):
    """``--search-methods ,`` once dropped the step search without a word (exit 0, --search-steps ignored)."""
    from medexport.cli.engines import EngineChoice

    monkeypatch.setattr(EngineChoice, "open", lambda *a, **k: pytest.fail("the bundle was opened"))
    report = tmp_path / "tune.json"
    base = ["tune", str(tmp_path / "bundle"), "--budget-fraction", "0.9", "--report", str(report)]
    for extra, message in (
        (["--search-steps", "4,6", "--search-methods", ","], "',' names nothing: give at least one, e.g. euler,heun"),
        (["--search-methods", ""], "'' names nothing"),
        (["--search-methods", "euler,,euler"], "euler given more than once"),
        (["--search-steps", ","], "give at least one value"),
        (["--steps", "5", "--search-methods", ""], "--steps 5 fixes the steps"),
    ):
        r = CliRunner().invoke(cli, [*base, *extra])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (extra, r.output)
        assert "--search-methods" in r.output or "--search-steps" in r.output, (extra, r.output)
    assert not report.exists()
    with pytest.raises(TuneError, match="search lists no"):  # the API: an empty search is not "no search"
        tune(None, SAMPLING, Budget("fraction", 0.9), search=[])


def test_the_cli_searches_steps_unless_given(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    report = tmp_path / "tune.json"
    base = [
        "tune",
        str(bundle),
        "--images",
        "2",
        "--batch",
        "2",
        "--sampler",
        "ode",
        "--cfg-scale",
        "2",
        "--no-adaptive",
        "--report",
        str(report),
    ]
    r = CliRunner().invoke(
        cli, [*base, "--budget-fraction", "0.9", "--search-steps", "4,6", "--search-methods", "euler", "--record"]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert (
        data["steps"] in (4, 6) and data["method"] == "euler" and data["steps_searched"] == [["euler", 6], ["euler", 4]]
    )
    defaults = Pipeline.from_bundle(bundle).defaults
    assert (defaults.schedule, defaults.steps, defaults.method) == (data["schedule"], data["steps"], "euler")
    for extra, message in (
        (["--steps", "5", "--search-steps", "4,6"], "--steps 5 fixes the steps"),
        (["--steps", "5", "--search-methods", "heun"], "--steps 5 fixes the steps"),
        (["--method", "euler", "--search-methods", "heun"], "both choose the method"),
        (["--search-steps", "1,6"], "step counts in 2.."),
    ):
        r = CliRunner().invoke(cli, [*base, "--budget-fraction", "0.9", *extra])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (extra, r.output)
