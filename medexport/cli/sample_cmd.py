"""``medexport sample``: generate from a bundle, optionally benchmark engines against the PyTorch reference."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import numpy as np
from rich.markup import escape

from ..core.files import replacing
from ..core.request import MAX_IMAGES, SampleRequest
from ..core.settings import SamplingSettings
from ..errors import SamplingError
from .engines import EngineChoice, needs_extra
from .main import cli, console, err_console, short_help
from .options import SCHEDULE_HELP, settings_options
from .outputs import output_folder, remove_stale
from .tables import print_table

log = logging.getLogger("medexport")


#: What ``sample`` writes into its --output folder.
SAMPLE_OUTPUTS = {"images", "grid.png", "latents.npy", "report.json", "step_latency.png", "samples.png"}


@cli.command("sample", short_help=short_help("sample"))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--labels",
    default=None,
    help="Comma-separated class labels, one per image: numbers, or class names where the bundle records "
    "them (e.g. sneaker,bag).",
)
@click.option("--num", default=4, show_default=True, help="Images, with random labels (when --labels is not given).")
@click.option(
    "--per-class",
    type=int,
    default=None,
    help="Instead of --num: this many images of every class (each grid row then holds every class).",
)
@click.option("--seed", default=0, show_default=True, help="Seeds labels, initial noise and SDE noise.")
@settings_options
@click.option("--schedule", default=None, help=SCHEDULE_HELP)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the images (pixel-space models) or latents (.npy), report.json and the step-latency "
    "plot [default: out/sample].",
)
@click.option("--out", "out_alias", type=click.Path(file_okay=False, path_type=Path), default=None, hidden=True)
@click.option(
    "--vae",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Local diffusers AutoencoderKL folder: decode latents to a PNG grid.",
)
@click.option(
    "--save-latents",
    is_flag=True,
    help="Pixel-space models: also keep the raw samples, unclamped, as latents.npy (the images are "
    "clamped to [-1, 1]).",
)
@click.option("--benchmark", is_flag=True, help="Warm-up, timed runs, and the PyTorch reference side by side.")
@click.option(
    "--warmup",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Untimed runs per backend before timing; they also measure peak memory (--benchmark).",
)
@click.option(
    "--runs",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Timed runs per backend, alternating between backends (--benchmark).",
)
@click.option(
    "--reference/--no-reference",
    default=True,
    show_default=True,
    help="With --benchmark, also time the PyTorch reference on the same inputs.",
)
@click.option(
    "--against",
    "against",
    multiple=True,
    type=click.Path(path_type=Path),
    help="With --benchmark, also time this bundle (another precision of the same model, say) side by "
    "side (repeatable).",
)
def sample_cmd(
    bundle,
    labels,
    num,
    per_class,
    seed,
    settings: SamplingSettings,
    engines: EngineChoice,
    schedule,
    out_dir,
    out_alias,
    vae,
    save_latents,
    benchmark,
    warmup,
    runs,
    reference,
    against,
) -> None:
    """Generate images (pixel-space models) or latents from a bundle with a mediator schedule.

    Settings not given come from the bundle's recommended sampling settings. --benchmark times the engines
    against the PyTorch reference.
    """
    from ..runtime.images import labelled_grid, save_images
    from ..runtime.report import environment, plot_trace, run_summary, write_report

    out_dir = out_dir or out_alias or Path("out/sample")  # --out: the earlier spelling
    backend, device, threads = engines.backend, engines.device, engines.threads
    if engines.lite(bundle) and (benchmark or vae is not None):
        raise needs_extra(
            "medexport sample " + ("--benchmark" if benchmark else "--vae"),
            *(("build",) if benchmark else ("vae", "diffusers")),
        )
    if benchmark:
        from ..runtime.pipeline import check_device

        check_device(device)  # a device that does not exist is refused before anything is measured or opened
        in_use = _memory_in_use(device)  # before any pipeline exists: each one's memory is measured from this
    pipe = engines.open(bundle)
    label_list = _labels(labels, num, per_class, seed, pipe)
    # the user's choices only: the run puts them on the bundle's recommendation (the one merge of a run)
    request = SampleRequest(label_list, seed=seed, settings=settings.override(schedule=schedule))
    chosen = request.settings.over(pipe.defaults)  # what will run, for the line printed below
    chosen.resolved()  # a setting that cannot run (--last-step with the ODE) is refused before anything is written
    if vae is not None and pipe.data is not None:
        raise SamplingError("--vae decodes sd-vae latents, but this bundle's model generates pixels: drop --vae")
    if vae is not None:
        from ..runtime.vae import check_vae_folder

        check_vae_folder(vae)  # a bad folder is refused before sampling, not after
    with output_folder(out_dir, "sample", SAMPLE_OUTPUTS):
        env = environment(pipe.device)
        console.print(f"sampling: {escape(chosen.describe())}", highlight=False)
        if not benchmark:
            with console.status(f"opening the {len(pipe.counts)} engines on {pipe.backend}"):
                warm = pipe.warmup(request)  # every engine before the first step: no switch pays for a session
            adaptive = _adaptive(chosen.schedule)  # kept, to say afterwards whether and when it switched
            with console.status(f"sampling {len(label_list)} images on {pipe.backend}"):
                result = pipe.run(request, schedule=adaptive)
            results = {pipe.backend: result}
            summaries = [run_summary(pipe, result) | {"warmup_seconds": round(sum(warm.values()), 3)}]
            ref_result = None
            console.print(
                f"{len(label_list)} images in {result.seconds:.2f} s on {pipe.backend} (engines opened and "
                f"warmed before, in {sum(warm.values()):.2f} s); steps per mediator count: "
                f"{steps_in_words(result.steps_per_count())}",
                highlight=False,
            )
            if adaptive is not None:
                console.print(escape(adaptive_in_words(adaptive)), highlight=False, soft_wrap=True)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from ..backend import registry
            from ..runtime.benchmark import check_comparable, run_benchmarks, summary
            from ..runtime.pipeline import Pipeline

            main = _label(pipe, bundle, against)
            factories = {main: lambda: pipe}
            others = {}
            for other in against:  # opened (and checked) now; their engines load during warm-up
                other_pipe = Pipeline.from_bundle(other, backend=backend, device=device, threads=threads)
                check_comparable(pipe, bundle, other_pipe, other)
                others[_label(other_pipe, other, against)] = other_pipe
            factories.update({label: (lambda p=p: p) for label, p in others.items()})
            ref = registry.reference().name
            if reference and pipe.backend != ref:  # on the device the engines turned out to run on
                factories[ref] = lambda: Pipeline.from_bundle(
                    bundle, backend=ref, device=str(pipe.device), threads=threads
                )
            total = (max(1, warmup) + runs) * len(factories)
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
            ) as progress:
                task = progress.add_task(escape(f"benchmark {' vs '.join(factories)}"), total=total)
                pipelines, stats = run_benchmarks(
                    factories,
                    request,
                    warmup=warmup,
                    runs=runs,
                    baselines={
                        main: in_use.get(pipe.device.type),
                        **{label: in_use.get(p.device.type) for label, p in others.items()},
                    },
                    progress=lambda: progress.advance(task),
                )
            ref_stats = stats.get(ref) if pipe.backend != ref else None
            summaries = [
                summary(pipelines[label], stats[label], ref_stats) | {"label": label} for label in (main, *others)
            ]
            if ref_stats is not None:
                summaries.append(summary(pipelines[ref], ref_stats, None) | {"label": ref})
            result = stats[main].last
            ref_result = ref_stats.last if ref_stats else None
            results = {name: s.last for name, s in stats.items()}
            _print_benchmark(stats, summaries, main, ref)
        written = []
        extra = {}
        if pipe.data is not None:  # pixel space: the samples are images
            names = pipe.data.get("class_names") or []
            files = save_images(result.latents, out_dir / "images")
            extra["images"] = [
                {
                    "index": i,
                    "label": y,
                    "class_name": names[y] if y < len(names) else str(y),
                    "seed": seed,
                    "file": str(f.relative_to(out_dir)),
                }
                for i, (y, f) in enumerate(zip(label_list, files))
            ]
            captions = [e["class_name"] for e in extra["images"]]
            grid = labelled_grid(
                result.latents, captions, out_dir / "grid.png", title=f"{Path(bundle).name}: {chosen.describe()}"
            )
            written += [out_dir / "images", grid]
            if save_latents:
                written.append(_save_latents(result.latents, out_dir / "latents.npy"))
        else:
            written.append(_save_latents(result.latents, out_dir / "latents.npy"))
        report = write_report(
            out_dir / "report.json",
            {**result.settings, "bundle": str(bundle), "benchmark": benchmark, "warmup": warmup, "runs": runs},
            env,
            summaries,
            result,
            ref_result,
            extra={"kind": "medexport-sample", "request": request.to_dict(), **extra},
        )
        written += [report, *filter(None, [plot_trace(out_dir / "step_latency.png", results)])]
        if vae is not None:
            from ..runtime.vae import decode, load_vae, save_grid

            written.append(save_grid(decode(load_vae(vae), result.latents), out_dir / "samples.png"))
        remove_stale(out_dir, SAMPLE_OUTPUTS, {Path(p).name for p in written})
        console.print(escape("wrote " + ", ".join(map(str, written))), highlight=False, soft_wrap=True)
        if pipe.data is not None:
            console.print(f"[bold]grid:[/] {escape(str(grid))}", highlight=False, soft_wrap=True)


def steps_in_words(steps: dict[int, int]) -> str:
    """{4: 6, 8: 6, 16: 7} -> "4 mediators: 6 steps, 8: 6, 16: 7"."""
    parts = [f"{n}: {k}" for n, k in steps.items()]
    if not parts:
        return "none"
    n, k = next(iter(steps.items()))
    parts[0] = f"{n} mediators: {k} step{'s' if k != 1 else ''}"
    return ", ".join(parts)


def _adaptive(schedule: str | None):
    """The :class:`AdaptiveSchedule` of an adaptive schedule's text, else None."""
    if not schedule or not str(schedule).startswith("adaptive"):
        return None
    from ..core.schedule import AdaptiveSchedule
    from ..core.schedule_text import parse_schedule

    sched = parse_schedule(str(schedule))
    return sched if isinstance(sched, AdaptiveSchedule) else None


def adaptive_in_words(sched) -> str:
    """What an adaptive schedule did in the run just made: its switches, or that it never switched and how far
    the closest step stayed from the first ratio (d_i / d_0 against r1)."""
    if sched.switches:
        return (
            "adaptive schedule: "
            + ", ".join(
                f"{s.from_count} -> {s.to_count} mediators after step {s.after_step}" for s in sched.switches[:6]
            )
            + (f" (and {len(sched.switches) - 6} more switches)" if len(sched.switches) > 6 else "")
        )
    first = sched.counts[0]
    if sched.per_sample:
        return f"adaptive schedule: never switched, every image stayed on {first} mediators"
    d0 = sched.d0
    after = [d for i, d in enumerate(sched.distances) if i >= sched.warmup + 1]
    if not after or not d0:
        return (
            f"adaptive schedule: never switched, {first} mediators throughout (too few steps after the "
            f"{sched.warmup}-step warm-up to compare)"
        )
    closest = min(after) / d0
    return (
        f"adaptive schedule: never switched, {first} mediators throughout: the smallest step change was "
        f"{closest:.2f} of the warm-up's (d_i / d_0), above the first ratio {sched.ratios[0]:g} by "
        f"{closest - sched.ratios[0]:.2f}; a ratio above {closest:.2f} would switch"
    )


def _save_latents(latents, path: Path) -> Path:
    """The raw latents as ``.npy`` (numpy or torch), written under a temporary name and renamed."""
    from ..runtime.images import as_numpy

    with replacing(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
        np.save(f, as_numpy(latents))
    return path


def _memory_in_use(device: str | None) -> dict[str, int]:
    """Memory in use now on each kind of device a pipeline opened with ``device`` may run on: its GPU (where CUDA
    is there and ``device`` allows it) and the CPU. A benchmark measures each pipeline's memory from the figure
    for the device that pipeline turned out to run on (ONNX Runtime without a GPU provider runs on the CPU of a
    GPU machine)."""
    import torch

    from ..runtime.memory import current_memory

    out = {}
    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        out["cuda"] = current_memory(torch.device(device or "cuda"))  # 0 while CUDA is not started: starts nothing
    out["cpu"] = current_memory(torch.device("cpu"))
    return out


def _labels(labels: str | None, num: int, per_class: int | None, seed: int, pipe) -> list[int]:
    """The class label of each image from --labels (numbers or class names), --per-class or --num (drawn with
    numpy's generator seeded with --seed: the same labels with or without torch)."""
    classes = pipe.num_classes
    if not -(2**63) <= seed < 2**64:
        raise SamplingError(f"--seed {seed} is out of range: use an integer in [-2**63, 2**64)")
    if sum(v is not None for v in (labels, per_class)) > 1:
        raise SamplingError("give either --labels or --per-class, not both")
    if labels is not None:
        names = [n.lower() for n in (pipe.data or {}).get("class_names", [])]
        out = []
        for token in (v.strip() for v in labels.split(",")):
            if not token:
                continue
            if token.lstrip("-").isdigit():
                out.append(int(token))
            elif token.lower() in names:
                out.append(names.index(token.lower()))
            else:
                known = f" or one of the class names: {', '.join(pipe.data['class_names'])}" if names else ""
                raise click.BadParameter(
                    f"{token!r} is not a class label: give numbers 0..{classes - 1}{known}", param_hint="--labels"
                )
        return out
    total = classes * per_class if per_class is not None else num
    if total > MAX_IMAGES:  # refused before any memory is taken
        raise SamplingError(
            f"{total} images is more than one sample run makes (at most {MAX_IMAGES}, all held in "
            f"memory at once): for large sets use `medexport generate`, which samples block by "
            f"block into shards and resumes"
        )
    if per_class is not None:
        if per_class < 1:
            raise SamplingError(f"--per-class {per_class}: give at least 1 image per class")
        return [i % classes for i in range(classes * per_class)]
    if num < 1:
        raise SamplingError("--num must be at least 1")
    return np.random.default_rng(seed % 2**64).integers(0, classes, num).tolist()


def _label(pipe, bundle: Path, against: tuple) -> str:
    """A benchmark column's name: the backend, with the precision and bundle when several bundles compete."""
    if not against:
        return pipe.backend
    return f"{pipe.backend} {pipe.precision} ({Path(bundle).name})"


def _print_benchmark(stats: dict, summaries: list[dict], main: str, ref: str) -> None:
    from rich.table import Table

    counts = sorted({e.mediators for s in stats.values() for e in s.last.trace})
    steps = stats[main].last.steps_per_count()
    table = Table(title="mean step latency (ms) per mediator count")
    table.add_column("mediators", justify="right")
    table.add_column("steps served", justify="right")
    for name in stats:
        table.add_column(escape(name), justify="right")  # a bundle's name is text, not markup
    if ref in stats and main != ref:
        table.add_column("speed-up", justify="right")
    per = {name: s.step_ms_per_count() for name, s in stats.items()}
    for n in counts:
        row = [str(n), str(steps.get(n, 0))] + [f"{per[name].get(n, float('nan')):.2f}" for name in stats]
        if ref in stats and main != ref:
            row.append(f"{per[ref][n] / per[main][n]:.2f}x")
        table.add_row(*row)
    print_table(table)
    table = Table(title="per batch (median of the timed runs)")
    table.add_column("")
    for s in summaries:
        table.add_column(escape(s.get("label", s["backend"])), justify="right")
    rows = [
        ("images", lambda s: str(s["images"])),
        ("latency per batch (s)", lambda s: f"{s['batch_seconds']:.3f}"),
        ("images / s", lambda s: f"{s['images_per_second']:.3f}"),
        ("peak memory of backend (MiB)", lambda s: f"{s['peak_memory_bytes'] / 2**20:.0f}"),
        ("engines opened, warmed (s)", lambda s: f"{s['warmup_seconds']:.2f}"),
        ("GFLOPs / image", lambda s: f"{s['gflops_per_image']:.1f}"),
        ("runtime overhead", lambda s: f"{100 * s['runtime_overhead_fraction']:.2f}%"),
        (
            f"speed-up vs {ref}",
            lambda s: f"{s['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in s else "reference",
        ),
    ]
    for label, fmt in rows:
        table.add_row(label, *[fmt(s) for s in summaries])
    print_table(table)
    if "max_rel_diff_vs_reference" in summaries[0]:
        console.print(
            f"final latents vs reference: max relative difference {summaries[0]['max_rel_diff_vs_reference']:.2e}"
        )
