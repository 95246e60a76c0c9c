"""``medexport calibrate``: record the inputs each mediator count's engine receives, for calibrated precisions."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .main import cli, console, short_help
from .options import SCHEDULE_HELP, THREADS_OPTION, sampler_options
from .tables import print_table


@cli.command(short_help=short_help("calibrate"))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--schedule", default=None, help=SCHEDULE_HELP)
@click.option(
    "--mode",
    type=click.Choice(["schedule", "trajectory"]),
    default="schedule",
    show_default=True,
    help="schedule: each count keeps only the steps it serves; trajectory: every count keeps every step.",
)
@click.option(
    "--num",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images sampled (labels cycle through the classes).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the noise (and of the row subset).")
@click.option(
    "--max-rows",
    default=2048,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows kept per count (a seeded random subset of what was recorded).",
)
@sampler_options
@THREADS_OPTION
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Calibration folder [default: calibration/<bundle name>, with -trajectory in trajectory mode].",
)
@click.option("--force", is_flag=True, help="Replace an existing calibration set in --output.")
def calibrate(
    bundle,
    schedule,
    mode,
    num,
    seed,
    max_rows,
    sampler,
    method,
    steps,
    last_step,
    cfg_scale,
    cfg_channels,
    threads,
    output,
    force,
) -> None:
    """Sample with the bundle's fp32 engines and record what each count's engine receives.

    Build calibrated engines from the result with `medexport build --precision int8-static --calibration DIR`.
    """
    from ..calibrate import record
    from ..quant.calibration import DEFAULT_ROOT

    out = output or DEFAULT_ROOT / (Path(bundle).resolve().name + ("-trajectory" if mode == "trajectory" else ""))
    t0 = time.perf_counter()
    sampling = {
        "sampler": sampler,
        "method": method,
        "steps": steps,
        "last_step": last_step,
        "cfg_scale": cfg_scale,
        "cfg_channels": cfg_channels,
    }
    calib = record(
        bundle,
        out,
        schedule=schedule,
        num=num,
        seed=seed,
        mode=mode,
        max_rows=max_rows,
        threads=threads,
        force=force,
        sampling=sampling,
    )
    m = calib.manifest
    table = Table(title=escape(f"calibration {out} ({mode}, {m['schedule']}, {num} images)"))
    for col in ("mediators", "rows kept", "evaluations", "steps"):
        table.add_column(col, justify="right" if col != "steps" else "left")
    for n in calib.counts:
        e = m["counts"][str(n)]
        steps = e["steps"]
        table.add_row(
            str(n), str(e["rows"]), str(e["evaluations"]), f"{steps[0]}-{steps[-1]} ({len(steps)})" if steps else "-"
        )
    print_table(table)
    console.print(
        escape(
            f"wrote {out} in {time.perf_counter() - t0:.1f} s; build with: medexport build "
            f"--precision int8-static --calibration {out}"
        ),
        highlight=False,
        soft_wrap=True,
    )
