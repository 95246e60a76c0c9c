"""The shipped demo model: hash-checked weights, a bundle that verifies, and images the judge recognises."""

import json

import pytest
import torch
from click.testing import CliRunner

import medexport
from medexport.bundle import Bundle, verify_bundle
from medexport.cli import cli
from medexport.core.settings import SamplingSettings
from medexport.demo import demo_card, demo_checkpoints, demo_counts
from medexport.judge import score
from medexport.model import read_checkpoint


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_shipped_weights_are_checked_and_describe_themselves():
    paths = demo_checkpoints()
    assert sorted(paths) == demo_counts() == [4, 8, 16]
    total = sum(p.stat().st_size for p in paths.values())
    assert 3e6 < total < 30e6
    card = demo_card()
    SamplingSettings.from_dict(card["sampling"])  # a valid recommendation
    for n, path in paths.items():
        _, info = read_checkpoint(path)
        assert info.config.mediators == n and info.config.in_channels == 1 and info.config.input_size == 28
        assert info.data["dataset"] == "fashion-mnist" and info.sampling == card["sampling"]
        assert info.train_steps == card["train_steps"][str(n)] > 0
    assert read_checkpoint(paths[8])[1].config.mediator_grid == (2, 4)  # the non-square count


def test_demo_bundle_records_data_and_sampling(demo_bundle):
    b = Bundle(demo_bundle)
    assert b.counts == [4, 8, 16]
    assert b.data["dataset"] == "fashion-mnist" and b.data["class_names"][9] == "Ankle boot"
    assert b.sampling == SamplingSettings.from_dict(demo_card()["sampling"])
    assert b.manifest["build"]["batch"] == "1:64:512"


def test_demo_bundle_verifies_at_fp32_tolerance(demo_bundle):
    results = verify_bundle(Bundle(demo_bundle))
    assert len(results) == 3 and all(r.passed for r in results), results
    assert max(r.max_rel for r in results) < 1e-5


def test_engine_images_are_recognised_by_the_judge(demo_bundle):
    pipe = medexport.Pipeline.from_bundle(demo_bundle, backend="onnxruntime")
    labels = [i % 10 for i in range(40)]
    result = pipe.sample(labels, seed=0)  # the bundle's recommended settings
    assert result.latents.shape == (40, 1, 28, 28)
    s = score(result.latents, labels)
    # a broken model scores ~10% (chance); the trained one, at its recommended settings, far more
    assert s.accuracy >= 0.7, s
    ref = medexport.Pipeline.from_bundle(demo_bundle, backend="torch").sample(labels[:10], seed=0)
    torch.testing.assert_close(pipe.sample(labels[:10], seed=0).latents, ref.latents, rtol=1e-4, atol=1e-4)


def test_build_of_one_demo_count_records_no_schedule_it_cannot_run(tmp_path):
    r = run("build", "--mediators", "16", "-o", tmp_path / "m16")
    assert r.exit_code == 0, r.output
    b = Bundle(tmp_path / "m16")
    assert b.counts == [16] and b.sampling.schedule is None
    assert b.sampling.cfg_scale == demo_card()["sampling"]["cfg_scale"]
    r = run("build", "--mediators", "32", "-o", tmp_path / "m32")
    assert r.exit_code == 1 and "no 32-mediator weights" in r.output


def test_sample_writes_images_grid_and_report(demo_bundle, tmp_path):
    out = tmp_path / "out"
    r = run("sample", demo_bundle, "--labels", "0,1,9", "--seed", "3", "--out", out)
    assert r.exit_code == 0, r.output
    from PIL import Image

    files = sorted((out / "images").iterdir())
    assert [f.name for f in files] == ["000.png", "001.png", "002.png"]
    assert all(Image.open(f).size == (28, 28) and Image.open(f).mode == "L" for f in files)
    grid = Image.open(out / "grid.png")
    assert grid.size[0] > 3 * 28 and grid.size[1] > 28
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == [
        {"index": 0, "label": 0, "class_name": "T-shirt/top", "seed": 3, "file": "images/000.png"},
        {"index": 1, "label": 1, "class_name": "Trouser", "seed": 3, "file": "images/001.png"},
        {"index": 2, "label": 9, "class_name": "Ankle boot", "seed": 3, "file": "images/002.png"},
    ]
    card = demo_card()["sampling"]
    assert report["settings"]["schedule"] == card["schedule"] and report["settings"]["steps"] == card["steps"]
    assert not (out / "latents.npy").exists()
    # the user's choices win over the bundle's
    r = run(
        "sample", demo_bundle, "--labels", "5", "--steps", "4", "--schedule", "16", "--cfg-scale", "1", "--out", out
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert (report["settings"]["steps"], report["settings"]["schedule"], report["settings"]["cfg_scale"]) == (
        4,
        "16",
        1.0,
    )
    assert [f.name for f in (out / "images").iterdir()] == ["000.png"]  # the previous run's images are gone
    r = run("sample", demo_bundle, "--labels", "5", "--vae", tmp_path, "--out", out)
    assert r.exit_code == 1 and "generates pixels" in r.output


def test_eval_table_and_report(demo_bundle, tmp_path):
    report = tmp_path / "eval.json"
    r = run(
        "eval",
        demo_bundle,
        "--per-class",
        "3",
        "--steps",
        "6",
        "--schedule",
        "16",
        "--schedule",
        "4:0.5,16",
        "--report",
        report,
    )
    assert r.exit_code == 0, r.output
    for text in ("accuracy", "FD", "GFLOPs / image", "ms / image", "fashion-mnist-cnn"):
        assert text in r.output, text
    data = json.loads(report.read_text())
    a, b = data["results"]
    assert (a["schedule"], b["schedule"]) == ("16", "4:0.5,16") and a["images"] == b["images"] == 30
    assert a["steps_per_count"] == {"16": 5} and b["steps_per_count"] == {"4": 3, "16": 2}
    assert b["gflops_per_image"] < a["gflops_per_image"]  # fewer mediators for some steps
    assert 0 <= a["accuracy"] <= 1 and a["fd"] > 0 and data["judge"]["name"] == "fashion-mnist-cnn"


def test_eval_refuses_what_the_judge_cannot_judge(demo_bundle, tiny_bundle, tmp_path):
    r = run("eval", tiny_bundle, "--per-class", "2", "--report", tmp_path / "e.json")
    assert r.exit_code == 1 and "judge does not apply" in r.output and not (tmp_path / "e.json").exists()
    r = run("eval", demo_bundle, "--per-class", "0", "--report", tmp_path / "e.json")
    assert r.exit_code == 1 and "at least 1 image per class" in r.output and not (tmp_path / "e.json").exists()


def test_sample_labels_by_class_name_and_per_class(demo_bundle, tmp_path):
    out = tmp_path / "out"
    r = run("sample", demo_bundle, "--labels", "sneaker,Ankle boot,3", "--steps", "3", "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert [(e["label"], e["class_name"]) for e in report["images"]] == [
        (7, "Sneaker"),
        (9, "Ankle boot"),
        (3, "Dress"),
    ]
    r = run("sample", demo_bundle, "--labels", "hat", "--out", out)
    assert r.exit_code == 2 and "Ankle boot" in r.output  # the known names are listed
    r = run("sample", demo_bundle, "--per-class", "2", "--steps", "3", "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert [e["label"] for e in report["images"]] == list(range(10)) * 2
    for bad in (["--per-class", "0"], ["--per-class", "1", "--labels", "1"]):
        r = run("sample", demo_bundle, *bad, "--out", out)
        assert r.exit_code == 1 and "error" in r.output


def test_rerun_into_an_earlier_output_leaves_no_stale_files(demo_bundle, tiny_bundle, tmp_path):
    out = tmp_path / "out"
    r = run(
        "sample", tiny_bundle, "--labels", "1", "--sampler", "ode", "--method", "euler", "--steps", "3", "--out", out
    )
    assert r.exit_code == 0 and (out / "latents.npy").exists()
    r = run("sample", demo_bundle, "--labels", "1", "--steps", "3", "--out", out)
    assert r.exit_code == 0, r.output
    assert not (out / "latents.npy").exists() and (out / "images" / "000.png").exists()


def test_tune_judges_the_demo_within_a_budget(demo_bundle):
    """The judge metric on the real model, and the trajectory proxy's agreement with it."""
    from medexport import Pipeline
    from medexport.tune import Budget, tune

    pipe = Pipeline.from_bundle(demo_bundle, backend="onnxruntime")
    result = tune(pipe, pipe.defaults, Budget("fraction", 0.985), metric="judge", images=20, batch=20, adaptive=False)
    assert result.best.gflops <= 0.985 * result.reference_gflops + 1e-9
    assert all(c.accuracy is not None and c.fd is not None and c.trajectory is not None for c in result.candidates)
    assert result.best.accuracy >= 0.8  # trained: the judge recognises its images
    assert result.rank_agreement is not None and -1 <= result.rank_agreement <= 1


def test_generate_writes_uint8_images_and_pngs(demo_bundle, tmp_path):
    """A pixel-space model: the ADM .npz holds uint8 NHWC images, and --png writes each one."""
    import json

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from medexport.cli import cli

    out = tmp_path / "gen"
    r = CliRunner().invoke(
        cli,
        [
            "generate",
            str(demo_bundle),
            "--num",
            "5",
            "--batch",
            "2",
            "--steps",
            "6",
            "--labels",
            "per-class",
            "--png",
            "-o",
            str(out),
            "--threads",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    with np.load(out / "samples_5x28x28x1.npz") as z:
        assert z["arr_0"].dtype == np.uint8 and list(z["labels"]) == [0, 1, 2, 3, 4]
        first = z["arr_0"][0, :, :, 0]
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 5
    assert np.array_equal(np.asarray(Image.open(pngs[0])), first)
    assert json.loads((out / "report.json").read_text())["spec"]["labels"] == "per-class"


def test_an_80_percent_budget_has_an_answer_when_the_steps_are_searched(demo_bundle):
    """At its own 20 steps no schedule of the demo fits 80% of the recommended cost (its counts cost within 3% of
    each other); searched with the steps, one does, and the judge still recognises its images."""
    from medexport import Pipeline
    from medexport.tune import Budget, TuneError, tune

    pipe = Pipeline.from_bundle(demo_bundle, backend="onnxruntime", threads=1)
    with pytest.raises(TuneError, match="below the cheapest schedule"):
        tune(pipe, pipe.defaults, Budget("fraction", 0.8), metric="judge", images=10, batch=10, adaptive=False)
    result = tune(
        pipe,
        pipe.defaults,
        Budget("fraction", 0.8),
        metric="judge",
        images=20,
        batch=20,
        adaptive=False,
        search=[("euler", 12), ("euler", 16)],
    )
    assert result.best.steps in (12, 16) and result.best.gflops <= 0.8 * result.reference_gflops * (1 + 1e-9)
    assert "recommended settings" in result.budget.describe()
    assert result.best.accuracy >= 0.8
