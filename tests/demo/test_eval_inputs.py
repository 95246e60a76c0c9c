"""``medexport eval`` with bad input: a --data folder that cannot be read, files that are not Fashion-MNIST's, and
image counts that cannot be judged are clear errors before any sampling."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medexport.cli import cli
from medexport.data import DEFAULT_DIR
from medexport.errors import DataError
from medexport.judge import JudgeError, real_floor
from medexport.judge.evaluate import MAX_PER_CLASS, check_per_class, floor_for
from tests.data.fake_idx import idx_bytes, write_fake

REAL = Path(DEFAULT_DIR)
needs_data = pytest.mark.skipif(
    not REAL.is_dir(), reason="dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)"
)
QUICK = ["--per-class", "1", "--steps", "3", "--schedule", "16"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_data_folder_that_is_missing_is_an_error_not_a_skip(demo_bundle, tmp_path):
    report = tmp_path / "eval.json"
    r = run("eval", demo_bundle, *QUICK, "--data", tmp_path / "nowhere", "--report", report)
    assert r.exit_code == 1, r.output
    assert "nowhere" in r.output and "does not exist" in r.output and "skipped" not in r.output
    assert "Traceback" not in r.output and not report.exists()


def test_a_truncated_train_images_file_is_an_error_naming_it(demo_bundle, tmp_path):
    folder = write_fake(tmp_path / "data")
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    r = run("eval", demo_bundle, *QUICK, "--data", folder, "--report", tmp_path / "eval.json")
    assert r.exit_code == 1, r.output
    assert "train-images-idx3-ubyte.gz" in r.output and "truncated or corrupt" in r.output
    assert "skipped" not in r.output and "Traceback" not in r.output and not (tmp_path / "eval.json").exists()


def test_files_that_are_not_the_published_ones_give_no_floor(demo_bundle, tmp_path):
    folder = write_fake(tmp_path / "data")  # the format, not Fashion-MNIST's images and labels
    r = run("eval", demo_bundle, *QUICK, "--data", folder, "--report", tmp_path / "eval.json")
    assert r.exit_code == 1, r.output
    assert "is not the published Fashion-MNIST file" in r.output and "apt-get install" in r.output


@needs_data
def test_labels_that_belong_to_other_images_are_caught(tmp_path):
    folder = shutil.copytree(REAL, tmp_path / "data")
    path = folder / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    labels = np.frombuffer(raw, np.uint8, offset=8)
    path.write_bytes(gzip.compress(idx_bytes(np.random.default_rng(0).permutation(labels))))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz' is not the published Fashion-MNIST file"):
        real_floor(100, data_dir=folder)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    (folder / "train-labels-idx1-ubyte").write_bytes(raw)  # the published content, not gzipped: accepted
    assert real_floor(100, data_dir=folder).images == 100


def test_only_the_default_folder_being_absent_skips_the_floor(tmp_path, monkeypatch):
    import medexport.data

    monkeypatch.delenv("MEDEXPORT_FASHION_MNIST", raising=False)
    monkeypatch.setattr(medexport.data, "DEFAULT_DIR", str(tmp_path / "not-installed"))
    assert floor_for(20) is None
    with pytest.raises(DataError, match="elsewhere.*does not exist"):
        floor_for(20, tmp_path / "elsewhere")
    monkeypatch.setenv("MEDEXPORT_FASHION_MNIST", str(tmp_path / "named"))
    with pytest.raises(DataError, match="named.*does not exist"):
        floor_for(20)


def test_per_class_is_bounded_before_anything_runs(demo_bundle, tmp_path):
    check_per_class(MAX_PER_CLASS)
    for bad in (MAX_PER_CLASS + 1, 1_000_000_000):
        with pytest.raises(JudgeError, match=f"--per-class {bad}: at most {MAX_PER_CLASS} images per class"):
            check_per_class(bad)
    with pytest.raises(JudgeError, match="Fashion-MNIST has 6000"):
        real_floor(10 * MAX_PER_CLASS + 10)
    r = run("eval", demo_bundle, "--per-class", "1000000000", "--report", tmp_path / "eval.json")
    assert r.exit_code == 1, r.output
    assert "at most 6000 images per class" in r.output and "medexport generate" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "eval.json").exists()


@needs_data
def test_the_installed_data_still_gives_the_floor(demo_bundle, tmp_path):
    report = tmp_path / "eval.json"
    r = run("eval", demo_bundle, *QUICK, "--data", REAL, "--report", report)
    assert r.exit_code == 0, r.output
    assert json.loads(report.read_text())["real_floor"]["images"] == 10


def test_bundle_names_print_as_text_not_markup(demo_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(demo_bundle, tmp_path / "odd[" / "]demo")
    r = run("eval", "odd[/]demo", demo_bundle, *QUICK, "--report", "eval.json")
    assert r.exit_code == 0, r.output
    assert "odd[/]demo" in r.output and "]demo" in r.output and "Traceback" not in r.output
