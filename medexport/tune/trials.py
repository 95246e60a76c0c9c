"""Running one candidate schedule on the tune's fixed labels and seeds, and scoring its samples (trajectory
distance, and the Fashion-MNIST judge where it applies)."""

from __future__ import annotations

import torch

from ..core.settings import SamplingSettings
from .budget import TuneError
from .results import METRICS, Candidate


class Trials:
    """Runs a schedule on the tune's fixed labels and seeds and scores it."""

    def __init__(self, pipe, sampling: SamplingSettings, *, metric: str, images: int, seed: int, batch: int):
        if metric not in METRICS:
            raise TuneError(f"unknown metric {metric!r}: choose {' or '.join(METRICS)}")
        self.pipe, self.sampling, self.metric, self.seed, self.batch = pipe, sampling, metric, seed, batch
        if metric == "judge":
            from ..judge.evaluate import check_applies

            check_applies(pipe)
        classes = pipe.config.num_classes
        self.labels = [i % classes for i in range(images)]
        self.judge_applies = metric == "judge"
        self.reference: torch.Tensor | None = None

    def warm_up(self) -> None:
        """Open and run every engine at the batch the runs use, so that no schedule's time includes a
        session's start."""
        from ..core.request import SampleRequest

        self.pipe.warmup(SampleRequest(self.labels[: self.batch], settings=self.sampling))

    def run(self, schedule: str, sampling: SamplingSettings | None = None) -> tuple[torch.Tensor, float, float, dict]:
        """(final samples, ms per image, measured GFLOPs per image, steps per count) of ``schedule`` under
        ``sampling`` (default: the tune's settings)."""
        from ..runtime.pipeline import sample_in_batches

        run = sample_in_batches(
            self.pipe,
            self.labels,
            (sampling or self.sampling).override(schedule=schedule),
            seed=self.seed,
            batch=self.batch,
        )
        return (run.latents, 1e3 * run.seconds / len(self.labels), run.flops_per_image / 1e9, run.steps_per_count)

    def score(self, c: Candidate, samples: torch.Tensor) -> None:
        """Judge ``samples``; the first samples scored (the largest static schedule's) are the trajectory
        reference."""
        if self.reference is None:
            self.reference = samples
        c.trajectory = float(((samples - self.reference) ** 2).mean().sqrt())
        if self.judge_applies:
            from ..judge import score

            s = score(samples, self.labels)
            c.accuracy, c.fd = s.accuracy, s.fd
