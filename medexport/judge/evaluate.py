"""Judging a bundle: generate K images per class under a schedule, score them, and account for their cost.

Every schedule of one evaluation sees the same labels and the same noise (image i's from ``(seed, i)`` alone,
whatever the batch), so differences between schedules are not differences of noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..core.settings import SamplingSettings
from . import JUDGE_NAME, REAL_PER_CLASS, JudgeError, JudgeScore, load_judge, real_floor, score

DATASET = "fashion-mnist"


def check_applies(pipe) -> None:
    """JudgeError unless the pipeline's model generates 28x28 Fashion-MNIST images: the judge knows nothing else."""
    data = getattr(pipe, "data", None)
    c = pipe.config
    if not data or data.get("dataset") != DATASET:
        what = "sd-vae latents" if not data else f"{data.get('dataset')!r} images"
        raise JudgeError(
            f"the judge scores pixel-space Fashion-MNIST models; this bundle's model generates {what}, "
            f"so the judge does not apply. Evaluate such models with a standard FID tool on "
            f"`medexport sample` output."
        )
    if (c.in_channels, c.input_size, c.num_classes) != (1, 28, 10):
        raise JudgeError(
            f"the judge scores 1x28x28 images of 10 classes; this model makes "
            f"{c.in_channels}x{c.input_size}x{c.input_size} images of {c.num_classes} classes"
        )


@dataclass
class EvalResult:
    """One schedule's score and cost."""

    schedule: str
    images: int
    accuracy: float
    confidence: float
    fd: float
    gflops_per_image: float
    ms_per_image: float
    steps_per_count: dict[int, int]
    per_class_accuracy: list[float]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps_per_count"] = {str(k): v for k, v in self.steps_per_count.items()}
        return d


#: The most images per class an evaluation makes: its real-vs-real floor draws as many real training images of
#: each class, and Fashion-MNIST has 6,000 (larger sets: `medexport generate`, and an FID tool).
MAX_PER_CLASS = REAL_PER_CLASS


def check_per_class(per_class: int) -> None:
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise JudgeError(f"--per-class {per_class!r}: give at least 1 image per class (50 or more for a stable FD)")
    if per_class > MAX_PER_CLASS:
        raise JudgeError(
            f"--per-class {per_class}: at most {MAX_PER_CLASS} images per class (the real-vs-real floor "
            f"compares them with as many real training images, and Fashion-MNIST has {REAL_PER_CLASS} "
            f"per class); for a larger set use `medexport generate` and an FID tool"
        )


def evaluate(
    pipe,
    sampling: SamplingSettings,
    *,
    per_class: int,
    seed: int = 0,
    batch: int = 100,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Generate ``per_class`` images of each class with ``sampling`` (its schedule included) and judge them."""
    check_per_class(per_class)
    if batch < 1:
        raise JudgeError(f"the batch must be at least 1 image, got {batch}")
    check_applies(pipe)
    judge = load_judge()
    labels = [i % 10 for i in range(10 * per_class)]  # every batch holds every class
    from ..runtime.pipeline import sample_in_batches

    run = sample_in_batches(pipe, labels, sampling, seed=seed, batch=batch, on_batch=on_batch)
    s: JudgeScore = score(run.latents, labels, judge)
    return EvalResult(
        run.schedule,
        s.images,
        s.accuracy,
        s.confidence,
        s.fd,
        run.flops_per_image / 1e9,
        1e3 * run.seconds / len(labels),
        run.steps_per_count,
        s.per_class_accuracy,
        {**sampling.to_dict(), "seed": seed, "backend": pipe.backend},
    )


def floor_for(images: int, data_dir=None) -> JudgeScore | None:
    """The real-vs-real score at ``images`` images, or None where no folder was named (``data_dir``,
    ``$MEDEXPORT_FASHION_MNIST``) and the default one is absent (the data set is not installed). A folder that is
    named or installed but cannot be read, or files that are not Fashion-MNIST's, are a DataError."""
    import os
    from pathlib import Path

    from ..data import DEFAULT_DIR

    if data_dir is None and not os.environ.get("MEDEXPORT_FASHION_MNIST") and not Path(DEFAULT_DIR).exists():
        return None
    return real_floor(images, data_dir=data_dir)


__all__ = [
    "DATASET",
    "EvalResult",
    "JUDGE_NAME",
    "MAX_PER_CLASS",
    "check_applies",
    "check_per_class",
    "evaluate",
    "floor_for",
]
