"""``medexport tune``: exact costs before running, the budget's edge, the search, the report, and bad input."""

import json

import pytest
from click.testing import CliRunner

from medexport import Pipeline
from medexport.cli import cli
from medexport.judge import JudgeError
from medexport.core.settings import SamplingSettings
from medexport.core.steps import StepInfo
from medexport.core.schedule_text import parse_schedule
from medexport.tune import (Budget, TuneError, allocation_schedule, check_budget_args, edge_allocations,
                            evaluation_steps, tune)
from tests.conftest import copy_bundle

SAMPLING = SamplingSettings(sampler="ode", method="euler", steps=9, cfg_scale=2.0, cfg_channels="all")


@pytest.mark.parametrize("total", [5, 9, 19, 50, 249])
def test_allocations_round_trip_through_the_schedule_text(total):
    counts = [16, 32, 64]
    for alloc in ([1, 1, total - 2], [total // 3, total // 3, total - 2 * (total // 3)], [0, 2, total - 2],
                  [total - 1, 0, 1], [total, 0, 0]):
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
    assert result.best.gflops <= 0.93 * result.largest_static_gflops + 1e-9
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
    with pytest.raises(TuneError, match=r"in \(0, 1\]"):
        check_budget_args(None, None, 1.5)
    from medexport.core.batch import BatchRange
    from medexport.bundle import BuildSettings, ModelSource, build_bundle

    one = tmp_path / "one"
    build_bundle([ModelSource(16, checkpoint=tiny_checkpoints[16])], one,
                 BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)), show_progress=False)
    with pytest.raises(TuneError, match="one mediator count"):
        tune(Pipeline.from_bundle(one), SAMPLING, Budget("fraction", 0.9), images=2, batch=2)


def test_the_cli_reports_plots_and_records(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    report = tmp_path / "tune.json"
    r = CliRunner().invoke(cli, ["tune", str(bundle), "--budget-fraction", "0.93", "--images", "4", "--batch", "4",
                                 "--sampler", "ode", "--method", "euler", "--steps", "9", "--cfg-scale", "2",
                                 "--no-adaptive", "--report", str(report), "--record"])
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert data["metric"] == "trajectory" and data["schedule"] in r.output and "frontier" in data
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Pipeline.from_bundle(bundle).defaults.schedule == data["schedule"]  # recorded as the default
    r = CliRunner().invoke(cli, ["tune", str(bundle), "--budget-fraction", "0.3", "--images", "2", "--steps", "5",
                                 "--sampler", "ode", "--method", "euler"])
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
    from medexport.core.batch import BatchRange
    from medexport.bundle import BuildSettings, ModelSource, build_bundle
    from tests.conftest import tiny_model

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    other16 = medexport.save_checkpoint(tiny_model(16, seed=99), tmp_path / "other-m16.pt", form="trainer")
    real_tune = medexport.tune.tune

    def tune_during_a_rebuild(*args, **kwargs):
        result = real_tune(*args, **kwargs)
        sources = [ModelSource(16, checkpoint=other16), *(ModelSource(n, checkpoint=tiny_checkpoints[n])
                                                         for n in (32, 64))]
        build_bundle(sources, bundle, BuildSettings(backend="onnxruntime", batch=BatchRange(1, 2, 4)),
                     show_progress=False)  # another process rebuilds the bundle meanwhile
        return result

    monkeypatch.setattr(medexport.tune, "tune", tune_during_a_rebuild)
    before = json.loads((bundle / "manifest.json").read_text())["sampling"]
    args = ["tune", str(bundle), "--budget-fraction", "0.93", "--images", "2", "--batch", "2", "--sampler", "ode",
            "--method", "euler", "--steps", "5", "--no-adaptive", "--report", str(tmp_path / "tune.json"), "--record"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert "changed while it was being judged" in r.output and "nothing was recorded" in r.output
    assert "Run the command again on the bundle as it is now" in r.output and "Traceback" not in r.output
    assert json.loads((bundle / "manifest.json").read_text())["sampling"] == before

    monkeypatch.setattr(medexport.tune, "tune", real_tune)  # untouched while judged: recorded
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert Pipeline.from_bundle(bundle).defaults.schedule == json.loads((tmp_path / "tune.json").read_text())["schedule"]


def test_the_bundle_path_prints_as_text_not_markup(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd[").mkdir()
    copy_bundle(tiny_bundle, tmp_path / "odd[" / "]b")
    r = CliRunner().invoke(cli, ["tune", "odd[/]b", "--budget-fraction", "0.93", "--images", "2", "--batch", "2",
                                 "--sampler", "ode", "--method", "euler", "--steps", "5", "--no-adaptive",
                                 "--report", "tune.json"])
    assert r.exit_code == 0, r.output
    assert "odd[/]b:" in r.output and "Traceback" not in r.output
