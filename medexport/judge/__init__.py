"""The offline quality judge for the Fashion-MNIST demo: class accuracy, confidence and a Frechet distance.

Standard FID needs Inception weights downloaded at run time; this judge ships with the package instead. A
small CNN (:mod:`.classifier`) trained on the Fashion-MNIST training set scores generated images: accuracy
for the conditioning label, mean confidence in it, and the Frechet distance between the judge's 64-d
penultimate features of the images and those of the 10,000 test images (their mean and covariance ship
with the weights). Numbers are comparable with each other, not with published FIDs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.assets import record_sums, verified_file
from ..core.files import replacing
from ..errors import MedexportError
from ..runtime.images import from_uint8
from ..runtime.images import to_uint8 as pixels_uint8
from .classifier import FEATURE_DIM, FashionJudge

WEIGHTS_DIR = Path(__file__).parent / "weights"
JUDGE_FILE = "fashion_judge.safetensors"
JUDGE_NAME = "fashion-mnist-cnn"
REAL_PER_CLASS = 6000  # training images of each class in Fashion-MNIST: the real-vs-real floor draws from them


class JudgeError(MedexportError):
    """The judge cannot score these images (wrong kind of model) or its shipped files are damaged."""


@dataclass(frozen=True)
class Judge:
    """The loaded judge: the network and the test set's feature statistics."""

    model: FashionJudge
    mu: np.ndarray  # (64,) float64
    sigma: np.ndarray  # (64, 64) float64
    meta: dict

    @property
    def name(self) -> str:
        return JUDGE_NAME


_CACHE: dict[str, Judge] = {}


def load_judge(folder: str | os.PathLike | None = None) -> Judge:
    """The shipped judge, hash-checked on load."""
    folder = Path(folder) if folder else WEIGHTS_DIR
    key = str(folder.resolve())
    if key in _CACHE:
        return _CACHE[key]
    from safetensors import safe_open

    path = verified_file(folder, JUDGE_FILE, "judge weights")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads((f.metadata() or {}).get("medexport_judge", "{}"))
    model = FashionJudge()
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    judge = Judge(model.eval(), tensors["stats.mu"].double().numpy(), tensors["stats.sigma"].double().numpy(), meta)
    _CACHE[key] = judge
    return judge


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with the trace of the root from the symmetric form
    S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2, and numerically stable)."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_root = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_root)


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Model output in [-1, 1], (B, 1, H, W) -> uint8 (B, H, W): exactly what the PNG files hold."""
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[1] != 1:
        raise JudgeError(f"the judge scores 1-channel images (B, 1, 28, 28), got {tuple(x.shape)}")
    return pixels_uint8(x)


@dataclass(frozen=True)
class JudgeScore:
    """What the judge says of a set of images."""

    judge: str
    images: int
    accuracy: float  # fraction whose predicted class is the conditioning label
    confidence: float  # mean probability of the conditioning label
    fd: float  # Frechet distance of the features against the 10,000 test images
    per_class_accuracy: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def score(images: torch.Tensor | np.ndarray, labels, judge: Judge | None = None) -> JudgeScore:
    """Score images (uint8 (B, 28, 28), or model output in [-1, 1] as (B, 1, 28, 28)) generated for ``labels``."""
    judge = judge or load_judge()
    arr = np.asarray(images) if isinstance(images, np.ndarray) and images.dtype == np.uint8 else to_uint8(images)
    if arr.ndim != 3 or arr.shape[1:] != (28, 28):
        raise JudgeError(f"the judge scores 28x28 Fashion-MNIST images, got images of shape {arr.shape[1:]}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(arr):
        raise JudgeError(f"{len(arr)} images but {len(labels)} labels")
    if len(arr) < 2:
        raise JudgeError("the Frechet distance needs at least 2 images")
    feats, probs = judge.model.embed(from_uint8(arr))
    feats, probs = feats.double().numpy(), probs.double().numpy()
    hit = probs.argmax(1) == labels
    per_class = [float(hit[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(10)]
    mu, sigma = feature_stats(feats)
    return JudgeScore(
        JUDGE_NAME,
        len(arr),
        float(hit.mean()),
        float(probs[np.arange(len(arr)), labels].mean()),
        frechet_distance(mu, sigma, judge.mu, judge.sigma),
        per_class,
    )


def real_floor(num: int, seed: int = 0, data_dir=None, judge: Judge | None = None) -> JudgeScore:
    """The judge's score of ``num`` real training images (balanced over classes) against the test statistics:
    the best a generator can expect at that sample count. The files must be the published Fashion-MNIST
    (known sha256): labels that belong to other images would make a floor without meaning."""
    from ..data import load_fashion_mnist

    per_class = max(1, num // 10)
    if per_class > REAL_PER_CLASS:
        raise JudgeError(
            f"the real-vs-real floor of {num} images needs {per_class} training images per class; "
            f"Fashion-MNIST has {REAL_PER_CLASS}: judge at most {10 * REAL_PER_CLASS} images"
        )
    images, labels = load_fashion_mnist("train", data_dir, genuine=True)
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    return score(images[idx], labels[idx], judge)


def write_judge(
    model: FashionJudge, test_images: torch.Tensor, folder: str | os.PathLike | None = None, meta: dict | None = None
) -> Path:
    """Save the judge's weights with the feature statistics of ``test_images`` (float, [-1, 1]) and its sha256."""
    from safetensors.torch import save_file

    folder = Path(folder) if folder else WEIGHTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    feats, _ = model.embed(test_images)
    mu, sigma = feature_stats(feats.double().numpy())
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors["stats.mu"] = torch.from_numpy(mu)
    tensors["stats.sigma"] = torch.from_numpy(sigma)
    meta = {**(meta or {}), "feature_dim": FEATURE_DIM, "stats": "fashion-mnist test, 10000 images"}
    with replacing(folder / JUDGE_FILE, mode=0o644) as tmp:  # package data: readable by every user
        save_file(tensors, str(tmp), metadata={"medexport_judge": json.dumps(meta)})
    record_sums(folder, [JUDGE_FILE])
    _CACHE.pop(str(folder.resolve()), None)
    return folder / JUDGE_FILE


__all__ = [
    "Judge",
    "JudgeError",
    "JudgeScore",
    "frechet_distance",
    "load_judge",
    "real_floor",
    "score",
    "to_uint8",
    "write_judge",
]
