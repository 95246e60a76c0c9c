"""``medexport.Pipeline``: sampling with one runner per mediator count, switched across denoising steps.

The pipeline owns the runners (any backend) and samples through the sampling core
(:func:`medexport.core.sampling.run_request`, shared with the torch-free runtime) on torch tensors: guidance as
the reference does it, the schedule picking the mediator count per step, and a trace of every model evaluation
(step, t, mediator count, backend, wall time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..backend import Runner, TorchRunner
from ..core.config import FULL
from ..core.files import replacing
from ..core.request import SampleRequest, image_seed
from ..core.sampling import Hook, ModelShape, SampleResult, TraceEntry, run_request, warmup, warmup_batches
from ..core.schedule import Schedule
from ..core.settings import SamplingSettings
from ..errors import ConfigError
from ..model import ModelConfig, forward_flops, load_checkpoint
from ..model.mediator_dit import MediatorDiT
from . import samplers as _samplers  # noqa: F401  (registers dopri5 for torch arrays)
from .arrays import TorchArrays

__all__ = [
    "BatchedSamples",
    "Pipeline",
    "SampleResult",
    "TraceEntry",
    "check_device",
    "latents_to_file",
    "sample_in_batches",
]

log = logging.getLogger(__name__)


class Pipeline:
    """Runners for several mediator counts of one model, and sampling across them.

    Build one with :meth:`from_bundle` (deployed engines) or :meth:`from_checkpoints` (PyTorch, no export).
    """

    def __init__(
        self,
        runners: dict[int, Runner],
        config: ModelConfig,
        *,
        defaults: SamplingSettings | None = None,
        data: dict | None = None,
    ):
        """``defaults``: the sampling settings used where a call gives none; ``data``: what the model generates
        (a bundle's ``data`` record: pixel space, data set, class names), None for latent models."""
        if not runners:
            raise ConfigError("a pipeline needs at least one runner")
        if FULL in runners and len(runners) > 1:  # another model, never part of a schedule
            raise ConfigError(
                f"a full-attention model (count {FULL}) and mediator counts "
                f"({', '.join(str(n) for n in sorted(runners) if n != FULL)}) cannot share a "
                f"pipeline: a "
                f"schedule switches between mediator counts of one model. Open the vanilla twin as a "
                f"pipeline of its own"
            )
        self.defaults = defaults or SamplingSettings()
        #: Called with every engine call's inputs before it runs (:class:`medexport.core.sampling.Evaluation`).
        self.hooks: list[Hook] = []
        self.data = data
        self.runners = dict(sorted(runners.items()))
        self.config = config  # shared architecture; config.mediators is that of the first runner
        self.backend = next(iter(self.runners.values())).backend
        self.device = torch.device(next(iter(self.runners.values())).device)
        self.arrays = TorchArrays(self.device)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(
        cls, path: str | os.PathLike, backend: str = "auto", device: str | None = None, threads: int | None = None
    ) -> Pipeline:
        """Runners for every count of a built bundle.

        ``backend``: "auto" (the first backend of the registry's preference whose engines all run here: TensorRT
        where the bundle has runnable plans, else ONNX Runtime), a backend's name, or "torch" (the PyTorch models
        the engines were built from: the reference).
        ``threads``: CPU threads of each ONNX Runtime session (default: ONNX Runtime's, all cores).
        """
        from ..backend import registry
        from ..bundle import engine_runner, open_bundle, sampling_backend

        check_device(device)
        bundle = open_bundle(path)
        backend = sampling_backend(bundle, backend)
        shared = registry.get(backend).shared_state()
        runners = {
            n: engine_runner(bundle, n, backend, shared=shared, device=device, threads=threads) for n in bundle.counts
        }
        return cls(runners, bundle.config(bundle.counts[0]), defaults=bundle.sampling, data=bundle.data)

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: dict[int, str | os.PathLike],
        *,
        device: str | None = None,
        weights: str = "ema",
        precision: str = "fp32",
        cuda_graph: bool = False,
    ) -> Pipeline:
        """PyTorch runners straight from checkpoints, one per mediator count (no export needed)."""
        models = {}
        for n, path in checkpoints.items():
            model = load_checkpoint(path, weights=weights)
            if model.config.mediators != n:
                raise ConfigError(f"{path} holds a {model.config.mediators}-mediator model, not {n}")
            models[n] = model
        return cls.from_models(models, device=device, precision=precision, cuda_graph=cuda_graph)

    @classmethod
    def from_models(
        cls,
        models: dict[int, MediatorDiT] | list[MediatorDiT],
        *,
        device: str | None = None,
        precision: str = "fp32",
        cuda_graph: bool = False,
    ) -> Pipeline:
        check_device(device)
        if isinstance(models, (list, tuple)):
            models = {m.config.mediators: m for m in models}
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        configs = {n: m.config for n, m in models.items()}
        first = next(iter(configs.values()))
        for n, c in configs.items():
            if c.with_mediators(first.mediators) != first:
                raise ConfigError(f"the {n}-mediator model has another architecture than the others")
        return cls(
            {n: TorchRunner(m, device=dev, precision=precision, cuda_graph=cuda_graph) for n, m in models.items()},
            first,
        )

    @property
    def counts(self) -> list[int]:
        return list(self.runners)

    @property
    def precision(self) -> str:
        """The runners' precision ("fp32", "int8", ...), or "mixed"."""
        precisions = {r.precision for r in self.runners.values()}
        return precisions.pop() if len(precisions) == 1 else "mixed"

    # -- sampling -----------------------------------------------------------------------------------------
    def sample(
        self,
        labels,
        *,
        noise: Tensor | None = None,
        seed: int | None = None,
        schedule: Schedule | str | None = None,
        image_seeds=None,
        check_finite: bool = True,
        **settings,
    ) -> SampleResult:
        """Generate latents (or, for a pixel-space model, images in [-1, 1]) for ``labels``.

        The keyword form of :meth:`run`: the arguments are those of :class:`SampleRequest` (the settings: the
        fields of :class:`SamplingSettings`, e.g. ``sampler="ode", steps=50, cfg_scale=4.0``), plus ``noise``,
        the initial state (B, C, S, S), drawn from ``seed`` when omitted, and ``schedule``, which may also be a
        :class:`Schedule` object. Settings left as None come from :attr:`defaults`.
        """
        sched_obj = schedule if isinstance(schedule, Schedule) else None
        request = SampleRequest(
            labels,
            seed=seed,
            image_seeds=image_seeds,
            check_finite=check_finite,
            schedule=None if sched_obj else schedule,
            **settings,
        )
        return self.run(request, noise=noise, schedule=sched_obj)

    def run(
        self, request: SampleRequest, *, noise: Tensor | None = None, schedule: Schedule | None = None
    ) -> SampleResult:
        """Run one :class:`SampleRequest`. ``schedule`` (an object) replaces the request's text schedule."""
        result = run_request(
            request,
            forwards=self.runners,
            xp=self.arrays,
            shape=ModelShape.of(self.config),
            defaults=self.defaults,
            schedule=schedule,
            noise=noise,
            hooks=self.hooks,
            backends={n: r.backend for n, r in self.runners.items()},
        )
        result.latents = result.latents.float().cpu()
        return result

    def warmup(self, request: SampleRequest | None = None, *, batches: list[int] | None = None) -> dict[int, float]:
        """Open and run every engine once before sampling (at the batch sizes ``request`` will use, or
        ``batches``, engine batch sizes counting the guidance doubling; default 1), so that the steps after a
        switch are as fast as the others. Returns {count: seconds}; a later run reports its sampling time without
        it. SamplingError, before any engine runs, for batch sizes that are not (0, negative, not integers)."""
        sizes = warmup_batches(request, self.defaults, batches)
        seconds = warmup(self.runners, xp=self.arrays, shape=ModelShape.of(self.config), batches=sizes)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return seconds

    @contextlib.contextmanager
    def hooked(self, hook: Hook) -> Iterator[Pipeline]:
        """Call ``hook`` with every engine call's inputs while the block runs."""
        self.hooks.append(hook)
        try:
            yield self
        finally:
            self.hooks.remove(hook)

    # -- accounting ---------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Class labels 0 .. num_classes - 1 (the null class, num_classes, is guidance's unconditional label)."""
        return self.config.num_classes

    def flops_per_image(self, result: SampleResult) -> float:
        """Multiply-adds per generated image under the run's schedule (guidance doubles each evaluation)."""
        per_count = {n: forward_flops(self.config.with_mediators(n)) for n in self.counts}
        images = len(result.latents)
        return sum(per_count[e.mediators] * e.batch for e in result.trace) / images


@dataclass
class BatchedSamples:
    """What :func:`sample_in_batches` made: the samples in label order and their cost."""

    latents: Tensor
    seconds: float  # sampling time, all batches
    flops_per_image: float
    steps_per_count: dict[int, int]  # steps each count served (the most of any batch)
    schedule: str  # the schedule that ran, in its canonical text


def sample_in_batches(
    pipe: Pipeline, labels: list[int], sampling: SamplingSettings, *, seed: int = 0, batch: int = 100, on_batch=None
) -> BatchedSamples:
    """Sample ``labels`` with ``sampling`` in batches of ``batch``; image i's noise comes from (``seed``, i)
    alone, so runs with other settings (another schedule, say) or another batch size see the same noise and
    labels. ``on_batch(k)`` after each batch."""
    images, flops, seconds, steps = [], 0.0, 0.0, {}
    for start in range(0, len(labels), batch):
        chunk = labels[start : start + batch]
        t0 = time.perf_counter()
        request = SampleRequest(
            chunk, image_seeds=[image_seed(seed, i) for i in range(start, start + len(chunk))], settings=sampling
        )
        result = pipe.run(request)
        seconds += time.perf_counter() - t0
        images.append(result.latents)
        flops += pipe.flops_per_image(result) * len(chunk)
        for n, k in result.steps_per_count().items():
            steps[n] = max(steps.get(n, 0), k)
        if on_batch:
            on_batch(len(chunk))
    return BatchedSamples(
        torch.cat(images), seconds, flops / len(labels), dict(sorted(steps.items())), str(result.settings["schedule"])
    )


def check_device(device: str | None) -> None:
    """Refuse a device that does not exist here, rather than running somewhere else without a word."""
    if device is None:
        return
    from ..errors import BackendUnavailableError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use cpu or cuda (cuda:N for a particular GPU)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported: use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} was asked for, but no CUDA GPU is visible here: use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackendUnavailableError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )


def latents_to_file(latents: Tensor, path: str | Path) -> Path:
    import numpy as np

    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, latents.numpy())
    return path
