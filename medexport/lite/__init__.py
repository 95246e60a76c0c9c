"""Sampling from an ONNX Runtime bundle with numpy and onnxruntime alone: no torch.

For applications and servers (a Triton python model, a small container) that embed the engines. This is the
sampling core (:mod:`medexport.core`: samplers, guidance, schedules, settings, the manifest) on numpy arrays,
with ONNX Runtime sessions as the forwards; :class:`medexport.Pipeline` is the same core on torch tensors, so
the same request gives the same images in both (bit for bit for the ODE, to float rounding for the SDE).
Not here: dopri5 (it needs torch and torchdiffeq). ``import medexport.lite`` loads numpy, onnxruntime and
medexport's torch-free modules only; ``pip install medexport`` is all it needs.

    from medexport.lite import LitePipeline
    pipe = LitePipeline.from_bundle("engines/fashion-mnist-demo", threads=1)
    result = pipe.sample([0, 1, 2], seed=0)          # the bundle's recommended settings
    result.latents                                    # float32 (3, 1, 28, 28); images in [-1, 1] for the demo
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..core.arrays import NUMPY
from ..core.batch import BatchRange, run_in_range
from ..core.manifest import read_complete
from ..core.request import SampleRequest
from ..core.sampling import Hook, ModelShape, SampleResult, run_request, warmup, warmup_batches
from ..core.schedule import Schedule
from ..core.settings import SamplingSettings
from ..errors import BundleError

__all__ = ["LitePipeline", "SampleRequest", "SampleResult", "SamplingSettings", "chunked"]

ENGINE = "onnxruntime"


def chunked(run: Callable, batch: BatchRange | None) -> Callable:
    """``run(x, t, y)`` for any batch: split into sizes within ``batch``, padded up to its minimum."""
    return lambda x, t, y: run_in_range(run, batch, x, t, y, np.concatenate)


class LitePipeline:
    """The sampling core on numpy arrays over one forward function per mediator count.

    ``forwards[n](x, t, y) -> v`` takes any batch (numpy float32 x (B, C, S, S), t (B,), int64 y (B,)).
    :meth:`from_bundle` makes them from ONNX Runtime sessions; the Triton sampler model makes them from calls to
    the per-count models (``medexport export-triton``).
    """

    def __init__(
        self,
        forwards: Mapping[int, Callable],
        config,
        defaults: SamplingSettings | dict | None = None,
        data: dict | None = None,
        *,
        backend: str = ENGINE,
    ):
        """``config``: the model config (its JSON dict, a ModelConfig or a :class:`ModelShape`); ``defaults``: the
        settings used where a request gives none (a bundle's recommendation, or its JSON object)."""
        self.forwards = dict(sorted(forwards.items()))
        self.shape = config if isinstance(config, ModelShape) else ModelShape.of(config)
        self.defaults = (
            defaults if isinstance(defaults, SamplingSettings) else SamplingSettings.from_dict(defaults or {})
        )
        self.data = data
        self.backend = backend
        #: The model config (its JSON dict or a ModelConfig) where known: the FLOPs of a run are counted from it.
        self.model_config = None if isinstance(config, ModelShape) else config
        #: Where the engines run (ONNX Runtime's CPU provider unless ``providers`` said otherwise).
        self.device = "cpu"
        #: Called with every engine call's inputs before it runs (:class:`medexport.core.sampling.Evaluation`).
        self.hooks: list[Hook] = []

    @classmethod
    def from_bundle(
        cls, path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None
    ) -> LitePipeline:
        """ONNX Runtime sessions for every count of a bundle, after checking every engine file's hash."""
        from ..backend.onnxrt.session import engine_session

        manifest = read_complete(path)
        forwards = {}
        for n, entry in manifest.counts.items():
            engine = entry.engines.get(ENGINE)
            if engine is None:
                raise BundleError(
                    f"bundle {path} has no {ENGINE} engine for {n} mediators: the torch-free runtime "
                    f"runs ONNX Runtime engines (build with --backend {ENGINE})"
                )
            main = engine.check(Path(path))
            single = len(engine.files) == 1  # a session made from one file can check the very bytes it uses
            session = engine_session(
                main,
                sha256=engine.sha256 if single else None,
                providers=providers or ["CPUExecutionProvider"],
                threads=threads,
            )
            forwards[n] = chunked(lambda x, t, y, s=session: s.run(None, {"x": x, "t": t, "y": y})[0], engine.batch)
        first = manifest.counts[manifest.count_list[0]].config
        pipe = cls(forwards, first, manifest.sampling, manifest.data)
        if providers and not all(p == "CPUExecutionProvider" for p in providers):
            pipe.device = "cuda"
        return pipe

    @property
    def counts(self) -> list[int]:
        return list(self.forwards)

    @property
    def num_classes(self) -> int:
        """Class labels 0 .. num_classes - 1 (the null class, num_classes, is guidance's unconditional label)."""
        return self.shape.num_classes

    def flops_per_image(self, result: SampleResult) -> float:
        """Multiply-adds per generated image under the run's schedule (guidance doubles each evaluation), as
        :meth:`medexport.Pipeline.flops_per_image`; needs the model config (a bundle's)."""
        from ..core.config import ModelConfig
        from ..core.flops import forward_flops

        if self.model_config is None:
            raise BundleError("FLOPs need the model's config: open the pipeline with LitePipeline.from_bundle")
        config = self.model_config
        config = ModelConfig.from_dict(config) if isinstance(config, dict) else config
        per_count = {n: forward_flops(config.with_mediators(n)) for n in self.counts}
        return sum(per_count[e.mediators] * e.batch for e in result.trace) / len(result.latents)

    def run(
        self, request: SampleRequest, *, noise: np.ndarray | None = None, schedule: Schedule | None = None
    ) -> SampleResult:
        """Run one :class:`SampleRequest`; the result's latents are numpy float32 (B, C, S, S)."""
        return run_request(
            request,
            forwards=self.forwards,
            xp=NUMPY,
            shape=self.shape,
            defaults=self.defaults,
            schedule=schedule,
            noise=noise,
            hooks=self.hooks,
            backends=dict.fromkeys(self.forwards, self.backend),
        )

    def warmup(self, request: SampleRequest | None = None, *, batches: list[int] | None = None) -> dict[int, float]:
        """Run every engine once before sampling, as :meth:`medexport.Pipeline.warmup`."""
        sizes = warmup_batches(request, self.defaults, batches)
        return warmup(self.forwards, xp=NUMPY, shape=self.shape, batches=sizes)

    def sample(
        self,
        labels,
        *,
        noise: np.ndarray | None = None,
        seed: int | None = None,
        schedule: Schedule | str | None = None,
        image_seeds=None,
        check_finite: bool = True,
        **settings,
    ) -> SampleResult:
        """The keyword form of :meth:`run`, as :meth:`medexport.Pipeline.sample`."""
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
