"""Where a sampler is: :class:`StepInfo`, passed to the velocity callable, to ``on_step`` and to schedules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepInfo:
    """Where a sampler is.

    Attributes:
        index: the step, counted from 0. For dopri5's velocity calls: the number of evaluations made before
            this one (dopri5 chooses its own steps).
        num_steps: how many steps the run makes (the SDE's last step included), or None when that is not known
            in advance (dopri5's velocity calls).
        t: the time at the start of the step (for dopri5's velocity calls: the time of the evaluation). Both
            evaluations of a Heun step see the same StepInfo; the ``t`` array tells them apart.
        progress: index / num_steps, in [0, 1); for dopri5's velocity calls the time t, clipped to [0, 1].
            Fixed mediator schedules are fractions of this.
    """

    index: int
    num_steps: int | None
    t: float
    progress: float
