"""One sampling request: what to generate and how, as a frozen dataclass with a JSON form.

:meth:`medexport.Pipeline.run` takes one; :meth:`medexport.Pipeline.sample` builds one from its keyword
arguments. The JSON form (:meth:`SampleRequest.to_dict` / :meth:`SampleRequest.from_dict`) is what a served
request carries. Fields left as None take the pipeline's defaults (a bundle's recommended settings).
Types are checked here (labels, seed, schedule, flags); the sampler settings by
:class:`~medexport.runtime.SamplerSettings`, and the label range and the schedule's counts by the pipeline that
runs the request.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields

from ..errors import SamplingError


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class SampleRequest:
    """Args:
        labels: class labels (ints), one per image.
        seed: seeds the initial noise and the SDE's noise (None: the noise is given, or drawn unseeded).
        image_seeds: instead of ``seed``, one seed per image: each image's noise (initial and SDE) comes from its
            own seed alone, whatever else is in the batch (:func:`image_seed` derives them from a run's seed
            and each image's global index).
        sampler, method, steps: "ode" / "sde", the integration method, and the step count (None: defaults).
        cfg_scale: classifier-free guidance scale (>= 1; 1 means none); cfg_channels: 3 (the reference) or "all".
        schedule: which mediator count serves which steps, in text form ("16:0.3,32:0.7,64", "adaptive:...").
        last_step, last_step_size, atol, rtol: see :class:`~medexport.runtime.SamplerSettings`.
        check_finite: stop with the step and the engine when an engine outputs NaN or inf.
    """

    labels: tuple[int, ...]
    seed: int | None = None
    image_seeds: tuple[int, ...] | None = None
    sampler: str | None = None
    method: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    cfg_channels: str | None = None
    schedule: str | None = None
    last_step: str | None = "mean"
    last_step_size: float = 0.04
    atol: float = 1e-6
    rtol: float = 1e-3
    check_finite: bool = True

    def __post_init__(self) -> None:
        labels = self.labels
        if hasattr(labels, "tolist") and hasattr(labels, "dtype"):  # a tensor or an array
            kind = "tensor" if type(labels).__name__ == "Tensor" else "array"
            if str(labels.dtype).removeprefix("torch.").startswith(("float", "bool", "complex")):
                raise SamplingError(f"labels must be integer class labels, got a {labels.dtype} {kind}")
            labels = labels.reshape(-1).tolist()
        elif isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
            raise SamplingError(f"labels must be a list of integer class labels, got {labels!r}")
        labels = list(labels)
        wrong = [v for v in labels if not _is_int(v)]
        if wrong:
            raise SamplingError(f"labels must be integers (class indices), got {wrong[:5]!r}: a float label would be "
                                f"truncated, a name must be mapped to its index first")
        if not labels:
            raise SamplingError("no labels given: pass at least one class label")
        object.__setattr__(self, "labels", tuple(int(v) for v in labels))
        if self.seed is not None and not (_is_int(self.seed) and -(2**63) <= self.seed < 2**64):
            raise SamplingError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}")
        if self.image_seeds is not None:
            seeds = list(self.image_seeds)
            if self.seed is not None:
                raise SamplingError("give seed or image_seeds, not both")
            if len(seeds) != len(self.labels) or not all(_is_int(v) and 0 <= v < 2**63 for v in seeds):
                raise SamplingError(f"image_seeds must be one integer in [0, 2**63) per label ({len(self.labels)}), "
                                    f"got {seeds[:5]!r}{'...' if len(seeds) > 5 else ''}")
            object.__setattr__(self, "image_seeds", tuple(int(v) for v in seeds))
        if self.cfg_channels is not None:
            object.__setattr__(self, "cfg_channels", str(self.cfg_channels))
        if _is_int(self.schedule):  # one count for every step
            object.__setattr__(self, "schedule", str(int(self.schedule)))
        if self.schedule is not None and not isinstance(self.schedule, str):
            raise SamplingError(f"schedule must be text such as \"16:0.3,32:0.7,64\", got {self.schedule!r}")
        if not isinstance(self.check_finite, bool):
            raise SamplingError(f"check_finite must be true or false, got {self.check_finite!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = list(self.labels)
        if self.image_seeds is not None:
            d["image_seeds"] = list(self.image_seeds)
        return d

    @classmethod
    def from_dict(cls, d: object) -> SampleRequest:
        """A request from its JSON form; SamplingError naming unknown or missing fields."""
        if not isinstance(d, dict):
            raise SamplingError(f"a sample request is a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SamplingError(f"unknown request field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "labels" not in d:
            raise SamplingError("a sample request needs 'labels'")
        return cls(**d)


def image_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for image ``index`` of a run seeded with ``seed`` (``stream`` tells its uses apart), from
    numpy's SeedSequence: independent of how the images are split into batches or ranks."""
    import numpy as np

    state = np.random.SeedSequence([seed % 2**64, index, stream]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
