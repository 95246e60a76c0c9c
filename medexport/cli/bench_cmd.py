"""``medexport bench``: a mediator bundle against its vanilla twin (full attention, same backend and precision)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..core.files import write_json
from ..core.manifest import Manifest
from ..core.request import SampleRequest
from ..core.settings import SamplingSettings
from ..errors import BundleError
from .engines import EngineChoice, needs_extra, torch_installed
from .main import cli, console, err_console, short_help
from .options import SCHEDULE_HELP, settings_options
from .outputs import output_folder, remove_stale
from .tables import print_table

BENCH_OUTPUTS = {"report.json", "bench.png"}


def find_twin(bundle: Path) -> Path:
    """The vanilla twin ``medexport build --attention full`` writes for ``bundle``'s model by default, or
    ``BUNDLE-full`` beside it; BundleError saying how to build one when neither exists."""
    manifest = Manifest.read(bundle)
    if manifest.is_full:
        raise BundleError(
            f"{bundle} is itself a vanilla (full-attention) bundle: bench a mediator bundle against "
            f"it with --against {bundle}"
        )
    source = manifest.counts[manifest.count_list[0]].source if manifest.counts else None
    precision = manifest.build.get("precision", "fp32")
    candidates = [Path(f"{bundle}-full")]
    if source is not None and source.kind == "random":
        from .bundle_cmds import default_output

        candidates.insert(0, default_output(source.model, source.image_size, [], precision, "full"))
    for path in candidates:
        if (path / "manifest.json").is_file():
            return path
    if source is not None and source.kind == "random":
        how = (
            f"`medexport build --model {source.model} --image-size {source.image_size} --attention full"
            + (f" --precision {precision}" if precision != "fp32" else "")
            + "`"
        )
    else:
        how = (
            "`medexport build --attention full --checkpoint VANILLA.pt` (the public DiT or SiT checkpoint of the "
            "same size and resolution" + (f", --precision {precision}" if precision != "fp32" else "") + ")"
        )
    raise BundleError(
        f"{bundle} has no vanilla twin to be measured against (looked for "
        f"{', '.join(map(str, candidates))}): build one with {how}, or pass --against VANILLA_BUNDLE"
    )


@cli.command("bench", short_help=short_help("bench"))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--against",
    "vanilla",
    type=click.Path(path_type=Path),
    default=None,
    help="The vanilla twin (built with --attention full) [default: the one `build --attention full` "
    "writes for this model, or BUNDLE-full].",
)
@click.option(
    "--num",
    default=4,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Images per end-to-end run (random labels).",
)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option(
    "--forward-batch",
    type=click.IntRange(min=1),
    default=None,
    help="Engine batch of the per-forward rows [default: --num, doubled under guidance].",
)
@click.option(
    "--rounds",
    default=5,
    show_default=True,
    type=click.IntRange(min=1),
    help="Timed rounds of per-forward calls (one call of every engine per round).",
)
@click.option(
    "--runs",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Timed end-to-end runs of each, alternating.",
)
@click.option(
    "--warmup",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Untimed end-to-end runs of each before timing (engines are opened and warmed before, apart).",
)
@click.option(
    "--profile",
    is_flag=True,
    help="Also print where one forward's time goes, op by op (torch.profiler: GPU kernels on CUDA, "
    "PyTorch ops on the CPU), the largest count against the vanilla model (--backend torch or "
    "inductor).",
)
@settings_options
@click.option("--schedule", default=None, help=SCHEDULE_HELP)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for report.json and bench.png [default: out/bench].",
)
def bench_cmd(
    bundle,
    vanilla,
    num,
    seed,
    forward_batch,
    rounds,
    runs,
    warmup,
    profile,
    schedule,
    out_dir,
    settings: SamplingSettings,
    engines: EngineChoice,
) -> None:
    """Measure a mediator bundle against its vanilla twin: ms per forward of every count beside the full-attention
    engine, images/s of the schedule end to end, the FLOPs-predicted and the measured speed-up, model FLOP
    utilisation against the matmul rate and the attention part's share of the copy bandwidth (both measured in
    the same run), peak memory, start-up times.

    Everything is timed in one process, alternating between the engines. Settings not given come from the
    bundle's recommended sampling settings (a random-weights bundle recommends the reference's 250 SDE steps:
    --steps makes a quicker run). On CUDA, --backend torch runs the models at the bundle's precision through
    CUDA graphs and --backend inductor compiles them (CUDA graphs too); engines that would not run on the
    --device asked for are refused before anything is timed.
    """
    if not torch_installed():
        raise needs_extra("medexport bench")
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..bench import check_bench_backend, check_twin, plot_bench, run_bench
    from ..runtime.pipeline import check_device
    from ..runtime.report import environment

    out_dir = out_dir or Path("out/bench")
    device, threads = engines.device, engines.threads
    check_device(device)
    vanilla = vanilla or find_twin(bundle)
    manifest = Manifest.read(bundle)
    # before the output folder is made and anything is timed: the pair, and whether its engines run where asked
    check_twin(bundle, manifest, vanilla, Manifest.read(vanilla))
    backend = check_bench_backend(bundle, engines.backend, device, profile=profile, batch=forward_batch)
    labels = torch.randint(
        0, manifest.model["num_classes"], (num,), generator=torch.Generator().manual_seed(seed)
    ).tolist()
    request = SampleRequest(labels, seed=seed, settings=settings.override(schedule=schedule))
    with output_folder(out_dir, "bench", BENCH_OUTPUTS):
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task(escape(f"bench {bundle} vs {vanilla}"), total=runs + 1 + rounds)
            report = run_bench(
                bundle,
                vanilla,
                request,
                backend=backend,
                device=device,
                threads=threads,
                batch=forward_batch,
                rounds=rounds,
                runs=runs,
                warmup=warmup,
                profile=profile,
                progress=lambda: progress.advance(task),
            )
        report["environment"] = environment(torch.device(report["device"]))
        report["trace"] = []  # the per-evaluation traces are `medexport sample`'s; this report holds the timings
        print_bench(report)
        written = [write_json(out_dir / "report.json", report), plot_bench(out_dir / "bench.png", report)]
        remove_stale(out_dir, BENCH_OUTPUTS, {p.name for p in written})
        console.print(escape("wrote " + ", ".join(map(str, written))), highlight=False, soft_wrap=True)


def print_bench(report: dict) -> None:
    from rich.table import Table

    from ..bench import bench_tables

    for table in bench_tables(report):
        out = Table(title=escape(table.title))
        for i, col in enumerate(table.columns):
            out.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
        for row in table.rows:
            out.add_row(*map(escape, row))
        print_table(out)
        for note in table.notes:
            console.print(escape(note), highlight=False, soft_wrap=True)
    env = report.get("environment", {})
    where = env.get("gpu") or f"CPU {env.get('cpu_flags', '?')}"
    console.print(
        escape(f"{where}, torch {env.get('torch', '?')}, {report.get('threads') or 'all'} threads"),
        highlight=False,
        soft_wrap=True,
    )
