"""``medexport tune``: search the bundle's mediator schedules for the best one within a budget."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..core.files import write_json
from ..core.settings import SamplingSettings
from ..errors import MedexportError
from .engines import EngineChoice, needs_extra, torch_installed
from .main import cli, console, err_console, parse_int_list, parse_name_list, short_help
from .options import settings_options
from .tables import print_table


@cli.command(short_help=short_help("tune"))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--budget-gflops", type=float, default=None, help="At most this many GFLOPs per image.")
@click.option("--budget-ms", type=float, default=None, help="At most this many ms per image, measured here.")
@click.option(
    "--budget-fraction",
    type=float,
    default=None,
    help="At most this share of a reference's GFLOPs (0.8 = 80%): the recommended settings' when the "
    "steps are searched, the largest static schedule's with --steps.",
)
@click.option(
    "--metric",
    type=click.Choice(["judge", "trajectory"]),
    default=None,
    help="judge: the shipped Fashion-MNIST judge (accuracy, then FD); trajectory: distance of the final "
    "samples from the largest count's, for any model [default: judge where it applies].",
)
@click.option(
    "--images",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images judged per schedule (the same labels and seeds for every schedule).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Image i's noise comes from (seed, i) alone: the same for every schedule.",
)
@click.option("--batch", default=100, show_default=True, type=click.IntRange(min=1), help="Images per sampling call.")
@click.option(
    "--adaptive/--no-adaptive",
    default=True,
    show_default=True,
    help="Also judge a few adaptive ratio pairs (cost measured, not predicted).",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("out/tune/tune.json"),
    show_default=True,
    help="JSON report (the plot goes beside it, .png).",
)
@click.option(
    "--record", is_flag=True, help="Record the chosen schedule (and steps, when searched) in the bundle as its default."
)
@click.option(
    "--search-steps",
    default=None,
    metavar="LIST",
    help="Without --steps the number of steps is searched with the schedule: these step counts, e.g. "
    "8,12,16,20 [default: 40% to 100% of the recommended steps].",
)
@click.option(
    "--search-methods",
    default=None,
    metavar="LIST",
    help="Methods of the step search, e.g. euler,heun [default: the recommended one, plus heun beside euler].",
)
@settings_options
def tune_cmd(
    bundle,
    budget_gflops,
    budget_ms,
    budget_fraction,
    metric,
    images,
    seed,
    batch,
    adaptive,
    report,
    record,
    search_steps,
    search_methods,
    settings: SamplingSettings,
    engines: EngineChoice,
) -> None:
    """Find the best mediator schedule within a budget: fixed switch points (few mediators first) on the budget's
    edge and adaptive ratios, judged on the same noise and labels; prints the choice and the frontier.

    A diffusion budget is mostly a step budget: unless --steps is given, the number of steps (and the method) is
    searched together with the schedule, and --budget-fraction is a share of the recommended settings' cost.
    With --steps N only the schedule is searched, and the fraction is of the largest static schedule's cost."""
    if not torch_installed():
        raise needs_extra("medexport tune")
    from ..tune import check_budget_args, step_grid, tune

    budget = check_budget_args(budget_gflops, budget_ms, budget_fraction)
    if settings.steps is not None and (search_steps is not None or search_methods is not None):
        raise MedexportError(
            f"--steps {settings.steps} fixes the steps, and --search-"
            f"{'steps' if search_steps is not None else 'methods'} asks to search them: give one of "
            f"the two"
        )
    if settings.method is not None and search_methods is not None:
        raise MedexportError(
            f"--method {settings.method} and --search-methods {search_methods} both choose the "
            f"method: give one of the two"
        )
    steps_list = parse_int_list(search_steps, "--search-steps") if search_steps is not None else None
    methods_list = (
        parse_name_list(search_methods, "--search-methods", "euler,heun") if search_methods is not None else None
    )
    judged = None
    if record:  # what is judged: a rebuild meanwhile must not receive a choice made on other engines
        from ..bundle.build import manifest_state

        try:
            judged = manifest_state(bundle)
        except MedexportError:
            judged = ""  # matches no state: opening the bundle, below, says what is wrong with it
    pipe = engines.open(bundle)
    if metric is None:
        from ..judge import JudgeError
        from ..judge.evaluate import check_applies

        try:
            check_applies(pipe)
            metric = "judge"
        except JudgeError:  # the judge knows only Fashion-MNIST: the proxy for any other model
            metric = "trajectory"
    sampling = settings.over(pipe.defaults)
    sampling.resolved()  # a setting that cannot run (--last-step with the ODE) is refused before any judging
    search = None
    if settings.steps is None:  # the steps are free: searched with the schedule
        search = step_grid(sampling, steps_list, [settings.method] if settings.method else methods_list)
    with err_console.status("tuning") as status:
        result = tune(
            pipe,
            sampling,
            budget,
            metric=metric,
            images=images,
            seed=seed,
            batch=batch,
            adaptive=adaptive,
            search=search,
            on_candidate=lambda c: status.update(f"tuning: judged {escape(c.describe())} ({c.gflops:.3f} GFLOPs)"),
        )
    _print(result, bundle, pipe)
    report.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, {"bundle": str(bundle), "backend": pipe.backend, **result.to_dict()})
    plot = _plot(result, report.with_suffix(".png"))
    console.print(escape("wrote " + ", ".join(str(p) for p in (report, plot) if p)), highlight=False, soft_wrap=True)
    if record:
        from ..bundle.build import record_sampling

        b = result.best
        changes = {"schedule": b.schedule} | ({"steps": b.steps, "method": b.method} if b.steps is not None else {})
        record_sampling(bundle, changes, expect_state=judged)
        console.print(
            escape(
                f"recorded {b.describe()} as {bundle}'s default "
                + ("schedule, method and steps" if b.steps is not None else "schedule")
            ),
            highlight=False,
        )


def _print(result, bundle, pipe) -> None:
    from rich.table import Table

    judge = result.metric == "judge"
    table = Table(
        title=escape(
            f"{bundle}: {result.budget.describe()}, {result.images} images per schedule, "
            + (
                f"steps searched ({', '.join(f'{m} {k}' for m, k in result.steps_searched)})"
                if result.steps_searched
                else f"{result.settings['evaluations']} evaluations"
            )
            + f", {pipe.backend}"
        )
    )
    searched = result.steps_searched is not None
    for col in (
        "schedule",
        *(("method", "steps") if searched else ()),
        "kind",
        "GFLOPs / image",
        "of reference",
        "ms / image (pred.)",
        "ms / image",
        *(("accuracy", "FD") if judge else ()),
        "trajectory",
        "fits",
        "",
    ):
        table.add_column(
            col, justify="left" if col in ("schedule", "kind", "") else "right", overflow="fold", min_width=None
        )
    front = {c.schedule for c in result.frontier()}
    for c in result.candidates:
        mark = "[bold green]chosen[/]" if c is result.best else ("frontier" if c.schedule in front else "")
        table.add_row(
            c.schedule,
            *((c.method, str(c.steps)) if searched else ()),
            c.kind,
            f"{c.gflops:.4f}",
            f"{c.gflops / result.reference_gflops:.1%}",
            f"{c.predicted_ms:.2f}" if c.predicted_ms is not None else "-",
            f"{c.measured_ms:.2f}",
            *((f"{100 * c.accuracy:.1f}%", f"{c.fd:.2f}") if judge else ()),
            f"{c.trajectory:.4f}" if c.trajectory is not None else "-",
            "yes" if result.budget.fits(c.cost) else "no",
            mark,
        )
    print_table(table)
    b = result.best
    quality = (
        f"judge accuracy {100 * b.accuracy:.1f}%, FD {b.fd:.2f}" if judge else f"trajectory distance {b.trajectory:.4f}"
    )
    console.print(
        f"[bold]best:[/] {escape(b.describe())}  ({b.gflops:.4f} GFLOPs / image predicted, "
        f"{b.measured_gflops:.4f} measured; {b.measured_ms:.2f} ms / image here; {quality})",
        highlight=False,
        soft_wrap=True,
    )
    if result.rank_agreement is not None:
        console.print(
            f"trajectory proxy vs judge FD: Spearman rank correlation {result.rank_agreement:.2f} over "
            f"{len(result.candidates)} schedules",
            highlight=False,
        )
    console.print(
        f"tune: {len(result.candidates)} schedules x {result.images} images in {result.seconds:.0f} s", highlight=False
    )


def _plot(result, path: Path) -> Path | None:
    from ..runtime.report import can_plot

    if not can_plot(f"the tune plot {path}"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.files import replacing

    judge = result.metric == "judge"
    value = (lambda c: 100 * c.accuracy) if judge else (lambda c: c.trajectory)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for kind, marker, colour in (("static", "s", "black"), ("fixed", "o", "tab:blue"), ("adaptive", "^", "tab:orange")):
        cs = [c for c in result.candidates if c.kind == kind]
        if cs:
            ax.scatter(
                [c.gflops for c in cs], [value(c) for c in cs], marker=marker, color=colour, label=kind, zorder=3
            )
    front = result.frontier()
    ax.plot([c.gflops for c in front], [value(c) for c in front], color="tab:green", alpha=0.6, label="frontier")
    b = result.best
    ax.scatter(
        [b.gflops], [value(b)], s=160, facecolors="none", edgecolors="tab:red", linewidths=2, label="chosen", zorder=4
    )
    if result.budget.kind in ("gflops", "fraction"):
        limit = result.budget.value * (result.reference_gflops if result.budget.kind == "fraction" else 1)
        ax.axvline(limit, color="tab:red", linestyle="--", alpha=0.6, label="budget")
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("judge accuracy (%)" if judge else "distance from the largest count's samples (lower is better)")
    ax.set_title(f"budget: {result.budget.describe()}\nchosen: {b.schedule}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
