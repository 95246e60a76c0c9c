"""The shipped judge: its hash check, the Frechet distance, and its scores on real images."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medexport.core.assets import AssetError
from medexport.data import DEFAULT_DIR
from medexport.judge import JUDGE_FILE, WEIGHTS_DIR, JudgeError, frechet_distance, load_judge, real_floor, score

HAVE_DATA = Path(DEFAULT_DIR).is_dir()
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)"
)


def test_shipped_judge_loads_and_is_hash_checked(tmp_path):
    judge = load_judge()
    assert judge.mu.shape == (64,) and judge.sigma.shape == (64, 64)
    assert np.allclose(judge.sigma, judge.sigma.T) and np.linalg.eigvalsh(judge.sigma).min() > -1e-9
    assert judge.meta["test_accuracy"] > 0.88
    folder = shutil.copytree(WEIGHTS_DIR, tmp_path / "weights")
    blob = bytearray((folder / JUDGE_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0x40
    (folder / JUDGE_FILE).write_bytes(bytes(blob))
    with pytest.raises(AssetError, match=f"{JUDGE_FILE}.*damaged or was changed"):
        load_judge(folder)
    (folder / JUDGE_FILE).unlink()
    with pytest.raises(AssetError, match="missing"):
        load_judge(folder)


def test_frechet_distance_against_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    s1 = a @ a.T + np.eye(5)
    mu = rng.normal(size=5)
    assert abs(frechet_distance(mu, s1, mu, s1)) < 1e-8
    # diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2 + |mu1 - mu2|^2
    d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    expected = ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum() + 3.0
    got = frechet_distance(np.zeros(3), np.diag(d1), np.ones(3), np.diag(d2))
    assert got == pytest.approx(expected, rel=1e-10)
    b = rng.normal(size=(5, 5))
    s2 = b @ b.T
    assert frechet_distance(mu, s1, -mu, s2) == pytest.approx(frechet_distance(-mu, s2, mu, s1), rel=1e-9)


def test_noise_scores_badly():
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(200, 1, 28, 28, generator=g) * 2 - 1
    s = score(noise, [i % 10 for i in range(200)])
    assert s.accuracy < 0.3 and s.fd > 50


def test_bad_input():
    with pytest.raises(JudgeError, match="1-channel"):
        score(torch.zeros(4, 3, 28, 28), [0, 1, 2, 3])
    with pytest.raises(JudgeError, match="28x28"):
        score(torch.zeros(4, 1, 32, 32), [0, 1, 2, 3])
    with pytest.raises(JudgeError, match="4 images but 3 labels"):
        score(torch.zeros(4, 1, 28, 28), [0, 1, 2])


@needs_data
def test_real_images_score_well():
    floor = real_floor(500)
    assert floor.images == 500 and floor.accuracy > 0.85 and floor.fd < 5
    # more images, smaller FD: the estimate's bias shrinks with the count
    assert real_floor(2000).fd < floor.fd


@pytest.mark.parametrize("line", ["damaged", "0123abcd  ", "zz" * 32 + "  demo.json"])
def test_a_malformed_line_of_the_shipped_sums_names_the_file_and_line(tmp_path, line):
    """A SHA256SUMS with a line that is not '<sha256>  <name>' is an AssetError naming the file and line."""
    from medexport.core.assets import SUMS, verified_file
    from medexport.demo import WEIGHTS_DIR as DEMO_WEIGHTS

    for source in (WEIGHTS_DIR, DEMO_WEIGHTS):
        folder = shutil.copytree(source, tmp_path / source.parent.name)
        lines = (folder / SUMS).read_text().splitlines()
        (folder / SUMS).write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")
        name = lines[0].split()[1]
        with pytest.raises(
            AssetError,
            match=rf"{SUMS}, line 2: .* is not '<sha256>  <file name>'.*reinstall "
            rf"medexport",
        ):
            verified_file(folder, name, "file")
    with pytest.raises(AssetError, match=f"{SUMS}, line 2"):
        load_judge(tmp_path / "judge")
