"""What a sampling run is, without the integration: the samplers' settings (:class:`SamplerSettings`) and
where a sampler is (:class:`StepInfo`). Nothing here imports torch, so schedules and the torch-free runtime
(:mod:`medexport.lite`) share these with the PyTorch samplers (:mod:`medexport.runtime.samplers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SamplingError

SAMPLERS = ("sde", "ode")
#: The integrators of each sampler; the first is not the default, see DEFAULT_METHOD.
METHODS: dict[str, tuple[str, ...]] = {"sde": ("euler", "heun"), "ode": ("euler", "heun", "dopri5")}
DEFAULT_METHOD = {"sde": "euler", "ode": "dopri5"}
DEFAULT_STEPS = {"sde": 250, "ode": 50}
LAST_STEPS = ("mean", "euler", "tweedie", "none")
#: The reference's ``--sample-eps``: without a last step the SDE grid ends at 1 - SAMPLE_EPS, not at 1.
SAMPLE_EPS = 1e-3


@dataclass(frozen=True)
class StepInfo:
    """Where a sampler is: passed to the velocity callable and to ``on_step``.

    Attributes:
        index: the step, counted from 0. For dopri5's velocity calls: the number of evaluations made before
            this one (dopri5 chooses its own steps).
        num_steps: how many steps the run makes (the SDE's last step included), or None when that is not known
            in advance (dopri5's velocity calls).
        t: the time at the start of the step (for dopri5's velocity calls: the time of the evaluation). Both
            evaluations of a Heun step see the same StepInfo; the ``t`` tensor tells them apart.
        progress: index / num_steps, in [0, 1); for dopri5's velocity calls the time t, clipped to [0, 1].
            Fixed mediator schedules are fractions of this.
    """

    index: int
    num_steps: int | None
    t: float
    progress: float


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample: one field per option of the reference's ``sample.py`` (CLI options map one-to-one).

    Attributes:
        sampler: "sde" (the reference default for its FID numbers) or "ode".
        method: the integrator. sde: "euler" (Euler-Maruyama, one evaluation per step) or "heun" (two);
            ode: "euler", "heun" (torchdiffeq's heun2 form, two evaluations per step) or "dopri5" (adaptive,
            needs torchdiffeq). None: "euler" for sde, "dopri5" for ode, as the reference.
        steps: the number of grid points, the reference's ``--num-sampling-steps``; None: 250 for sde, 50 for
            ode. sde: grid linspace(0, 1 - last_step_size, steps), steps - 1 stochastic steps, then the last
            step, so 250 Euler-Maruyama steps with a last step make exactly 250 evaluations. ode: grid
            linspace(0, 1, steps), so a fixed-step run makes steps - 1 steps (Euler with steps=50: 49
            evaluations); dopri5 chooses its own steps and returns the state at these grid points.
        last_step: sde only (ignored by ode): the final, noise-free step from t = 1 - last_step_size to 1.
            "mean": x + f(x, t) * size (the reference default); "euler": x + v(x, t) * size; "tweedie": the
            reference's Tweedie estimate x / t + (1 - t)^2 / t * s(x, t); "none": no last step, and the grid
            then ends at 1 - 1e-3 as in the reference. Each but "none" is one more evaluation.
        last_step_size: sde only: the size of the last step, in (0, 1); 0.04 as the reference.
        diffusion_norm: sde only: the magnitude of the diffusion coefficient w = norm * (1 - t); >= 0.
        atol: dopri5 only: absolute error tolerance.
        rtol: dopri5 only: relative error tolerance.

    Names are case-insensitive ("Mean" and "Euler" as the reference spells them are accepted, and a
    ``last_step`` of None means "none"); they are stored in lower case.
    """

    sampler: str = "sde"
    method: str | None = None
    steps: int | None = None
    last_step: str | None = "mean"
    last_step_size: float = 0.04
    diffusion_norm: float = 1.0
    atol: float = 1e-6
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        sampler = self._name("sampler", self.sampler)
        if sampler not in SAMPLERS:
            raise SamplingError(f"unknown sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        object.__setattr__(self, "sampler", sampler)
        if self.method is not None:
            method = self._name("method", self.method)
            if method not in METHODS[sampler]:
                raise SamplingError(
                    f"unknown {sampler} method {self.method!r}: choose one of {', '.join(METHODS[sampler])}"
                    + (" (dopri5 is an ode method: use --sampler ode)" if method == "dopri5" else "")
                )
            object.__setattr__(self, "method", method)
        last_step = "none" if self.last_step is None else self._name("last_step", self.last_step)
        if last_step not in LAST_STEPS:
            raise SamplingError(f"unknown last step {self.last_step!r}: choose one of {', '.join(LAST_STEPS)}")
        object.__setattr__(self, "last_step", last_step)
        if self.steps is not None and (not isinstance(self.steps, int) or isinstance(self.steps, bool)
                                       or self.steps < 2):
            raise SamplingError(
                f"steps must be an integer >= 2 (it counts grid points, ends included), got {self.steps!r}"
            )
        if not _is_number(self.last_step_size) or not 0 < self.last_step_size < 1:
            raise SamplingError(
                f"last_step_size must be in (0, 1), got {self.last_step_size!r}; the reference uses 0.04"
            )
        if not _is_number(self.diffusion_norm) or self.diffusion_norm < 0:
            raise SamplingError(f"diffusion_norm must be a finite number >= 0, got {self.diffusion_norm!r}")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise SamplingError(f"{name} must be a finite number > 0, got {value!r}")

    @staticmethod
    def _name(field: str, value: object) -> str:
        if not isinstance(value, str):
            raise SamplingError(f"{field} must be a string, got {value!r}")
        return value.strip().lower()

    @property
    def resolved_method(self) -> str:
        """The integrator that runs: ``method``, or the sampler's default."""
        return self.method if self.method is not None else DEFAULT_METHOD[self.sampler]

    @property
    def resolved_steps(self) -> int:
        """The number of grid points: ``steps``, or the sampler's default."""
        return self.steps if self.steps is not None else DEFAULT_STEPS[self.sampler]

    @property
    def has_last_step(self) -> bool:
        """Whether the run ends with an SDE last step that evaluates the model."""
        return self.sampler == "sde" and self.last_step != "none"

    @property
    def num_model_steps(self) -> int | None:
        """How many steps a run makes (what :attr:`StepInfo.num_steps` says); None for dopri5."""
        if self.resolved_method == "dopri5":
            return None
        return self.resolved_steps - 1 + (1 if self.has_last_step else 0)

    @property
    def evaluations_per_step(self) -> int | None:
        """Velocity evaluations per step (the SDE's last step makes one); None for dopri5."""
        return {"euler": 1, "heun": 2}.get(self.resolved_method)

    @property
    def num_evaluations(self) -> int | None:
        """Velocity evaluations of a whole run, e.g. 250 for the SDE default; None for dopri5."""
        per_step = self.evaluations_per_step
        if per_step is None:
            return None
        return per_step * (self.resolved_steps - 1) + (1 if self.has_last_step else 0)

    @property
    def grid_end(self) -> float:
        """The last grid point: 1 - last_step_size (sde), 1 - 1e-3 (sde without a last step), 1 (ode)."""
        if self.sampler == "ode":
            return 1.0
        return 1 - self.last_step_size if self.has_last_step else 1 - SAMPLE_EPS

    def time_grid(self):
        """The float32 grid linspace(0, grid_end, steps) as a torch tensor, as the reference builds it."""
        import torch

        return torch.linspace(0, self.grid_end, self.resolved_steps, dtype=torch.float32)
