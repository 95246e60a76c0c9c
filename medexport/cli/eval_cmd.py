"""``medexport eval``: judge a pixel-space Fashion-MNIST bundle's images per schedule (accuracy, FD, cost)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..core.files import write_json
from ..core.settings import SamplingSettings
from .engines import EngineChoice, needs_extra, torch_installed
from .main import cli, console, err_console, short_help
from .options import SCHEDULE_HELP, settings_options
from .tables import print_table

#: Images per class at most (``judge.evaluate.MAX_PER_CLASS``, checked there; here for the help without torch).
MAX_PER_CLASS = 6000


@cli.command("eval", short_help=short_help("eval"))
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--schedule",
    "schedules",
    multiple=True,
    help=SCHEDULE_HELP + " Repeat to compare schedules on the same noise and labels.",
)
@click.option(
    "--per-class",
    default=50,
    show_default=True,
    type=int,
    help=f"Images generated per class (at most {MAX_PER_CLASS}).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Image i's noise comes from (seed, i) alone (the same for every schedule and bundle).",
)
@click.option("--batch", default=100, show_default=True, type=click.IntRange(min=1), help="Images per sampling call.")
@settings_options
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("out/eval/eval.json"),
    show_default=True,
    help="JSON report.",
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Fashion-MNIST folder for the real-vs-real floor (the published files; one that cannot be read is an "
    "error) [default: /usr/share/datasets/fashion-mnist, skipped where it is not installed].",
)
def eval_cmd(
    bundles, schedules, per_class, seed, batch, settings: SamplingSettings, engines: EngineChoice, report, data
) -> None:
    """Generate --per-class images of each class under each schedule and score them with the shipped judge.

    Several BUNDLES (the fp32 bundle and its int8 form, say) are judged side by side on the same noise, labels
    and settings (those of the first bundle, with the options given on top).
    """
    if not torch_installed():  # the judge is a PyTorch network
        raise needs_extra("medexport eval (its judge is a PyTorch network)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ..judge import load_judge
    from ..judge.evaluate import check_applies, check_per_class, evaluate, floor_for

    check_per_class(per_class)  # before any work (evaluate checks again, for API callers)
    pipes = []
    for bundle in bundles:  # every bundle opened and checked before any sampling
        pipe = engines.open(bundle)
        check_applies(pipe)
        pipes.append(pipe)
    judge = load_judge()
    # The real-vs-real floor first: a --data folder that cannot be read is an error before any sampling
    floor = floor_for(10 * per_class, data)
    base = settings.over(pipes[0].defaults)
    plans = [base.override(schedule=s) for s in schedules] or [base]
    for plan in plans:
        plan.resolved()  # a setting that cannot run (--last-step with the ODE) is refused before any sampling
    rows = []  # (bundle label, precision, EvalResult)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        for bundle, pipe in zip(bundles, pipes):
            precision = next(iter(pipe.runners.values())).precision
            for plan in plans:
                label = escape(f"{Path(bundle).name}: {plan.schedule or max(pipe.counts)}")  # markup
                task = progress.add_task(label, total=10 * per_class)
                rows.append(
                    (
                        Path(bundle).name,
                        precision,
                        evaluate(
                            pipe,
                            plan,
                            per_class=per_class,
                            seed=seed,
                            batch=batch,
                            on_batch=lambda k, task=task: progress.advance(task, k),
                        ),
                    )
                )
    several = len(bundles) > 1
    title = ", ".join(map(str, bundles))
    table = Table(
        title=escape(
            f"{title}: {10 * per_class} images per schedule, {base.describe(schedule=False)}, {pipes[0].backend}"
        )
    )
    columns = (("bundle", "precision") if several else ()) + (
        "schedule",
        "accuracy",
        "confidence",
        "FD",
        "GFLOPs / image",
        "ms / image",
        "steps per count",
    )
    for col in columns:
        table.add_column(
            col,
            justify="left" if col in ("bundle", "precision", "schedule", "steps per count") else "right",
            overflow="fold",
        )
    for name, precision, r in rows:
        table.add_row(
            *((escape(name), precision) if several else ()),
            r.schedule,
            f"{100 * r.accuracy:.1f}%",
            f"{r.confidence:.3f}",
            f"{r.fd:.2f}",
            f"{r.gflops_per_image:.3f}",
            f"{r.ms_per_image:.2f}",
            ", ".join(f"{n}: {k}" for n, k in r.steps_per_count.items()),
        )  # header: steps per count
    if floor is not None:
        table.add_row(
            *(("real images", "-") if several else ()),
            "real images" if not several else "-",
            f"{100 * floor.accuracy:.1f}%",
            f"{floor.confidence:.3f}",
            f"{floor.fd:.2f}",
            "-",
            "-",
            "training set, same count",
        )
    print_table(table)
    real_acc = judge.meta.get("test_accuracy")
    console.print(
        f"judge: {judge.name} (shipped; {100 * real_acc:.1f}% on the 10,000 real test images); FD on its "
        f"64-d features against the test set; not comparable with Inception FIDs",
        highlight=False,
        soft_wrap=True,
    )
    if floor is None:
        console.print(
            "real-vs-real floor: skipped, the Fashion-MNIST data is not installed "
            "(apt-get install -y dataset-fashion-mnist)",
            highlight=False,
        )
    out = {
        "bundle": str(bundles[0]),
        "bundles": [str(b) for b in bundles],
        "judge": {"name": judge.name, **judge.meta},
        "per_class": per_class,
        "seed": seed,
        "backend": pipes[0].backend,
        "results": [{"bundle": name, "precision": precision, **r.to_dict()} for name, precision, r in rows],
        "real_floor": floor.to_dict() if floor else None,
    }
    report.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, out)
    console.print(escape(f"wrote {report}"), highlight=False, soft_wrap=True)
