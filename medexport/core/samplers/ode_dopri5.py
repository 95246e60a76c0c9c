"""The ODE's dopri5 (adaptive, torchdiffeq; the reference's default for the ODE). It needs torch and torchdiffeq:
the torch runtime (:mod:`medexport.runtime.samplers`) registers its implementation, a subclass of this one, in
its place; this record says what it needs where that did not happen."""

from __future__ import annotations

from ...errors import SamplingError
from . import Run, Sampler, register

NEEDS = (
    'the ode sampler\'s dopri5 method needs torch and torchdiffeq (pip install "medexport[ode]") and the '
    "PyTorch runtime (medexport.Pipeline); the torch-free runtime runs the fixed-step samplers: choose "
    "--method euler or heun"
)


class OdeDopri5(Sampler):
    sampler, method, order, arrays, default = "ode", "dopri5", None, ("torch",), True
    summary = "adaptive Dormand-Prince (torchdiffeq), atol / rtol"

    def available(self, xp=None) -> None:
        if xp is not None and xp.name not in self.arrays:
            raise SamplingError(NEEDS)

    def integrate(self, run: Run, x):
        raise SamplingError(NEEDS)


register(OdeDopri5())
