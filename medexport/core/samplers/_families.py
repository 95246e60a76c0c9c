"""The two sampler families of the reference (registered before their samplers), and the SDE's last step,
which every SDE integrator shares."""

from __future__ import annotations

from . import Family, FixedStepSampler, Run, register_family, score

register_family(Family("sde", 250, "the reference's SDE (its default, for its FID numbers)"))
register_family(Family("ode", 50, "the probability-flow ODE"))


class SdeSampler(FixedStepSampler):
    """The SDE family: steps - 1 stochastic steps with a constant dt, then the reference's last step."""

    sampler = "sde"

    def integrate(self, run: Run, x):
        s = run.settings
        x = super().integrate(run, x)  # the stochastic steps
        if not s.has_last_step:
            return x
        t1 = 1 - s.last_step_size
        info = run.info(s.resolved_steps - 1, t1)
        t = run.time(t1, x)
        size = s.last_step_size  # a Python float: applied in the state's dtype, as the reference
        if s.last_step == "mean":
            x = x + run.drift(x, t, info) * size
        elif s.last_step == "euler":
            x = x + run.v(x, t, info) * size
        else:  # tweedie: x / alpha + sigma^2 / alpha * score, alpha and sigma read off the first sample's time
            alpha, sigma = t[0], 1 - t[0]
            x = x / alpha + (sigma**2) / alpha * score(run.v(x, t, info), x, t)
        run.done(info, x)
        return x
