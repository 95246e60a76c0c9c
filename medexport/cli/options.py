"""Options several commands share: how to sample (``sample``, ``eval``, ``calibrate``, ``tune``, ``generate``),
which engines run where, CPU threads, and the help text of ``--schedule``.

:func:`settings_options` is the typed form (as Polygraphy's argument groups): the sampling options arrive as one
:class:`~medexport.core.settings.SamplingSettings` (``settings``, the user's choices only, validated when parsed)
and the engine options as one :class:`~medexport.cli.engines.EngineChoice` (``engines``, whose threads are set
here, once).

Light to import: declaring these options loads neither torch nor the runtime (its benchmark included). The
choices that are defined beside torch code (the backends a pipeline can run, the guided channels) are read from
their modules when click first needs them (help, parsing, completion), so each list has one definition.
"""

from __future__ import annotations

import functools
import importlib

import click

from ..core.settings import LAST_STEPS, METHODS, SAMPLERS, SamplingSettings
from ..errors import MedexportError
from .engines import EngineChoice

ALL_METHODS = sorted({m for ms in METHODS.values() for m in ms})


class DeferredChoice(click.Choice):
    """A :class:`click.Choice` whose values are the sequence ``name`` of ``module`` (relative to this package), or
    what it returns when it is a function, imported the first time the values are needed rather than when the
    option is declared."""

    def __init__(self, module: str, name: str, case_sensitive: bool = True) -> None:
        # click.Choice.__init__ would read the values now: set what it sets, without them.
        self._source = (module, name)
        self._values: tuple | None = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple:
        if self._values is None:
            module, name = self._source
            values = getattr(importlib.import_module(module, __package__), name)
            self._values = tuple(values() if callable(values) else values)
        return self._values


#: ``--backend`` of the sampling commands: auto, torch, or an engine backend (``backend.registry``).
BACKEND_CHOICE = DeferredChoice("..backend.registry", "sample_choices")
#: ``--cfg-channels``: the channels guidance guides (``core.settings``).
CFG_CHANNELS_CHOICE = DeferredChoice("..core.settings", "CFG_CHANNELS")

SAMPLER_OPTIONS = [
    click.option(
        "--sampler",
        type=click.Choice(SAMPLERS),
        default=None,
        help="sde or ode [default: the bundle's recommendation, else sde].",
    ),
    click.option(
        "--method",
        type=click.Choice(ALL_METHODS),
        default=None,
        help="sde: euler (Euler-Maruyama) | heun; ode: euler | heun | dopri5 [default: the bundle's, "
        "else euler / dopri5].",
    ),
    click.option(
        "--steps",
        type=int,
        default=None,
        help="SDE: steps (default 250). ODE: grid points as in the reference, so euler with 50 makes "
        "49 evaluations (default 50). [default: the bundle's]",
    ),
    click.option(
        "--last-step",
        type=click.Choice(LAST_STEPS),
        default=None,
        help="SDE last step [default: the bundle's, else mean]; the ODE has none (refused with it).",
    ),
    click.option(
        "--cfg-scale", type=float, default=None, help="Guidance scale (1: none) [default: the bundle's, else 1]."
    ),
    click.option(
        "--cfg-channels",
        type=CFG_CHANNELS_CHOICE,
        default=None,
        help="Guide the first 3 channels (the reference) or all [default: the bundle's, else 3].",
    ),
]
THREADS_OPTION = click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads of PyTorch and ONNX Runtime [default: all cores].",
)
ENGINE_OPTIONS = [
    click.option(
        "--backend",
        type=BACKEND_CHOICE,
        default="auto",
        show_default=True,
        help="Which engines run: auto = the fastest that runs here; torch = the PyTorch models the "
        "engines were built from.",
    ),
    click.option("--device", default=None, help="cpu or cuda (default: the backend's)."),
    THREADS_OPTION,
]

SCHEDULE_HELP = (
    'Mediator schedule: "16:0.3,32:0.7,64" (fractions of the steps), "64" (static), or '
    '"adaptive:16,32,64:ratios=0.5,0.2[:warmup=3][:distance=mae]" [default: the bundle\'s, else the '
    "largest count]."
)


def _apply(options, f):
    for option in reversed(options):
        f = option(f)
    return f


def sampler_options(f):
    """How to sample (sampler, method, steps, guidance); left out, each comes from the bundle's record."""
    return _apply(SAMPLER_OPTIONS, f)


def sampling_options(f):
    """How to sample, and which engines run where (backend, device, threads): ``sample``, ``eval``, ``tune``
    and ``generate``."""
    return _apply(SAMPLER_OPTIONS + ENGINE_OPTIONS, f)


SETTINGS_FIELDS = ("sampler", "method", "steps", "last_step", "cfg_scale", "cfg_channels")


def settings_options(f):
    """The sampling and engine options, parsed into ``settings`` (:class:`SamplingSettings` of the options given;
    the rest come from the bundle) and ``engines`` (:class:`EngineChoice`, its CPU threads set)."""

    @functools.wraps(f)
    def command(*args, backend, device, threads, **kwargs):
        choices = {k: kwargs.pop(k) for k in SETTINGS_FIELDS}
        try:
            settings = SamplingSettings(**{k: v for k, v in choices.items() if v is not None})
        except MedexportError as e:
            raise click.UsageError(str(e)) from None
        engines = EngineChoice(backend, device, threads)
        engines.set_threads()
        return f(*args, settings=settings, engines=engines, **kwargs)

    return _apply(SAMPLER_OPTIONS + ENGINE_OPTIONS, command)
