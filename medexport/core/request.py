"""One sampling request: what to generate (labels, seeds) and how (:class:`SamplingSettings`), with a JSON form.

:meth:`medexport.Pipeline.run` and :meth:`medexport.lite.LitePipeline.run` take one; the Triton sampler model
builds one from its inputs. The JSON form (:meth:`SampleRequest.to_dict` / :meth:`SampleRequest.from_dict`) is
flat: the labels, the seeds, ``check_finite`` and the settings' fields side by side. Settings left as None take
the pipeline's defaults (a bundle's recommended settings). Types and values are checked here; the label range
and the schedule's counts by the pipeline that runs the request (they depend on the model).

Noise: image i's initial noise and its SDE noise come from its own seed alone (``image_seeds[i]``, or
``image_seed(seed, i)`` for a request with one ``seed``), drawn with numpy's generator, so the same request gives
the same images in every runtime, whatever other images share its batch.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

import numpy as np

from ..errors import SamplingError
from .settings import SamplingSettings

_SETTINGS = tuple(f.name for f in fields(SamplingSettings))
#: The most images one request may ask for: a bound known before any memory is taken.
MAX_IMAGES = 1 << 20


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _labels(labels: object) -> tuple[int, ...]:
    if hasattr(labels, "tolist") and hasattr(labels, "dtype"):  # a tensor or an array
        kind = "tensor" if type(labels).__name__ == "Tensor" else "array"
        if str(labels.dtype).removeprefix("torch.").startswith(("float", "bool", "complex")):
            raise SamplingError(f"labels must be integer class labels, got a {labels.dtype} {kind}")
        labels = labels.reshape(-1).tolist()
    elif isinstance(labels, (str, bytes, dict)) or not hasattr(labels, "__iter__"):
        raise SamplingError(f"labels must be a list of integer class labels, got {labels!r}")
    labels = list(labels)
    wrong = [v for v in labels if not _is_int(v)]
    if wrong:
        raise SamplingError(
            f"labels must be integers (class indices), got {wrong[:5]!r}: a float label would be "
            f"truncated, a name must be mapped to its index first"
        )
    if not labels:
        raise SamplingError("no labels given: pass at least one class label")
    if len(labels) > MAX_IMAGES:
        raise SamplingError(
            f"{len(labels)} images in one request is more than {MAX_IMAGES}: split it (medexport "
            f"generate makes large sets block by block)"
        )
    return tuple(int(v) for v in labels)


@dataclass(frozen=True, init=False)
class SampleRequest:
    """What to generate and how.

    ``SampleRequest(labels, seed=0, steps=50, schedule="16:0.3,32:0.7,64")``: the sampling settings may be given
    as keywords (the fields of :class:`SamplingSettings`) or as ``settings=``; they read back as attributes
    (``request.steps``) or as ``request.settings``.

    Attributes:
        labels: class labels (ints), one per image.
        seed: seeds every image's noise (image i from ``image_seed(seed, i)``); None: the noise is given, or
            drawn unseeded. An integer in [-2**63, 2**64).
        image_seeds: instead of ``seed``, one seed per image in [0, 2**63): each image's noise (initial and
            SDE) comes from its own seed alone (``medexport generate`` derives them from a run's seed and each
            image's global index).
        settings: how to sample; fields left None take the pipeline's defaults.
        check_finite: stop with the step and the engine when an engine outputs NaN or inf.
    """

    labels: tuple[int, ...]
    seed: int | None
    image_seeds: tuple[int, ...] | None
    settings: SamplingSettings
    check_finite: bool

    def __init__(
        self,
        labels,
        *,
        seed: int | None = None,
        image_seeds=None,
        settings: SamplingSettings | None = None,
        check_finite: bool = True,
        **options,
    ):
        unknown = sorted(set(options) - set(_SETTINGS))
        if unknown:
            raise SamplingError(
                f"unknown request field(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(('labels', 'seed', 'image_seeds', 'check_finite', *_SETTINGS)))}"
            )
        if settings is not None and options:
            raise SamplingError("give the sampling settings as settings= or as keywords, not both")
        if settings is not None and not isinstance(settings, SamplingSettings):
            raise SamplingError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
        settings = settings if settings is not None else SamplingSettings(**options)
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        put("labels", _labels(labels))
        if seed is not None and not (_is_int(seed) and -(2**63) <= seed < 2**64):
            raise SamplingError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
        put("seed", None if seed is None else int(seed))
        if image_seeds is not None:
            if isinstance(image_seeds, (str, bytes)) or not hasattr(image_seeds, "__iter__"):
                raise SamplingError(f"image_seeds must be a list of integers, got {image_seeds!r}")
            seeds = list(image_seeds.tolist() if hasattr(image_seeds, "tolist") else image_seeds)
            if seed is not None:
                raise SamplingError("give seed or image_seeds, not both")
            if len(seeds) != len(self.labels) or not all(_is_int(v) and 0 <= v < 2**63 for v in seeds):
                raise SamplingError(
                    f"image_seeds must be one integer in [0, 2**63) per label ({len(self.labels)}), "
                    f"got {seeds[:5]!r}{'...' if len(seeds) > 5 else ''}"
                )
            image_seeds = tuple(int(v) for v in seeds)
        put("image_seeds", image_seeds)
        put("settings", settings)
        if not isinstance(check_finite, bool):
            raise SamplingError(f"check_finite must be true or false, got {check_finite!r}")
        put("check_finite", check_finite)

    def __getattr__(self, name: str):
        if name in _SETTINGS:  # request.steps, request.schedule, ...: the settings' fields
            return getattr(self.settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def row_seeds(self) -> tuple[int, ...] | None:
        """Each image's seed: ``image_seeds``, or derived from ``seed`` and the image's index; None unseeded."""
        if self.image_seeds is not None:
            return self.image_seeds
        if self.seed is None:
            return None
        return tuple(image_seed(self.seed, i) for i in range(len(self.labels)))

    def to_dict(self) -> dict:
        return {
            "labels": list(self.labels),
            "seed": self.seed,
            "image_seeds": None if self.image_seeds is None else list(self.image_seeds),
            **self.settings.to_dict(),
            "check_finite": self.check_finite,
        }

    @classmethod
    def from_dict(cls, d: object) -> SampleRequest:
        """A request from its JSON form; SamplingError naming unknown or missing fields."""
        if not isinstance(d, dict):
            raise SamplingError(f"a sample request is a JSON object, got {type(d).__name__}")
        if "labels" not in d:
            raise SamplingError("a sample request needs 'labels'")
        if "settings" in d:
            raise SamplingError(
                "a sample request's JSON form is flat: give the settings' fields (steps, "
                "schedule, ...) beside the labels, not under 'settings'"
            )
        return cls(**d)


def image_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for image ``index`` of a run seeded with ``seed`` (``stream`` tells its uses apart), from
    numpy's SeedSequence: independent of how the images are split into batches or ranks."""
    state = np.random.SeedSequence([seed % 2**64, index, stream]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


#: The noise streams of an image's seed: the initial state, the SDE noise of the conditional rows, that of the
#: unconditional rows (guidance doubles the state).
INITIAL, SDE_COND, SDE_UNCOND = 0, 1, 2


class RowNoise:
    """Standard normal float32 noise, one numpy generator per row: row r of every draw comes from its own
    generator, so an image's noise does not depend on which other images share its batch."""

    def __init__(self, seeds: list[int] | None, rows: int):
        if seeds is None:
            self.generators = [np.random.default_rng() for _ in range(rows)]
        else:
            self.generators = [np.random.default_rng(s) for s in seeds]

    @classmethod
    def for_request(cls, row_seeds: tuple[int, ...] | None, stream: int, rows: int) -> RowNoise:
        return cls(None if row_seeds is None else [image_seed(s, 0, stream) for s in row_seeds], rows)

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        if shape[0] != len(self.generators):
            raise SamplingError(f"{len(self.generators)} row generators for a state of {shape[0]} rows")
        return np.stack([g.standard_normal(shape[1:], dtype=np.float32) for g in self.generators])

    def __add__(self, other: RowNoise) -> RowNoise:
        joined = RowNoise([], 0)
        joined.generators = self.generators + other.generators
        return joined
