"""``medexport generate``: many images (an FID set) from a bundle; runs unchanged under torchrun."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..core.settings import SamplingSettings
from .engines import EngineChoice
from .main import cli, console, short_help
from .options import SCHEDULE_HELP, settings_options


@cli.command(short_help=short_help("generate"))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--num", required=True, type=click.IntRange(min=1), help="Images to generate (50000 for FID).")
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run folder: shards, the gathered .npz, report.json (a re-run resumes it).",
)
@click.option("--schedule", default=None, help=SCHEDULE_HELP)
@click.option("--seed", default=0, show_default=True, help="Image i's label and noise come from (seed, i) alone.")
@click.option(
    "--batch",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per block (per sampling call; part of the run's settings).",
)
@click.option(
    "--labels",
    "label_mode",
    type=click.Choice(["random", "per-class"]),
    default="random",
    show_default=True,
    help="random: uniform (as DiT's sample_ddp); per-class: image i gets class i mod K.",
)
@click.option("--png", is_flag=True, help="Also write every image as a PNG (pixel-space models, or with --vae).")
@click.option(
    "--vae",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Decode latents with a local sd-vae folder (pip install 'medexport[vae]').",
)
@settings_options
def generate_cmd(
    bundle, num, out, schedule, seed, batch, label_mode, png, vae, settings: SamplingSettings, engines: EngineChoice
) -> None:
    """Generate --num images into --output, in one process or sharded across torchrun ranks (the same images
    whatever the number of ranks). Rank 0 gathers an .npz that the ADM FID evaluator reads.

    \b
    Under torchrun, put -- before medexport (without it torchrun takes --num for its own option):
      torchrun --nproc_per_node K --no-python -- medexport generate BUNDLE --num N -o DIR
    """
    from ..bundle import open_bundle
    from ..runtime.generate import GenerateSpec, generate

    backend, device, threads = engines.backend, engines.device, engines.threads
    b = open_bundle(bundle)
    chosen = settings.override(schedule=schedule).over(b.sampling)
    chosen.resolved()  # a setting that cannot run (--last-step with the ODE) is refused before any sampling
    sampling = chosen.to_dict()
    precisions = {b.onnx(n).precision for n in b.counts}
    spec = GenerateSpec(
        bundle=str(Path(bundle).resolve()),
        num=num,
        seed=seed,
        batch=batch,
        labels=label_mode,
        sampling=sampling,
        backend=backend,
        precision=",".join(sorted(precisions)),
    )
    if vae is not None:
        from ..runtime.vae import check_vae_folder

        check_vae_folder(vae)
    if b.data is None and vae is None:
        console.print(
            "note: this bundle's model makes sd-vae latents; without --vae the .npz holds latents, "
            "which need decoding before an FID",
            highlight=False,
        )
    report = generate(bundle, out, spec, device=device, threads=threads, png=png, vae=vae)
    if report is None:
        return  # not rank 0
    for r in report["ranks"]:
        console.print(
            f"rank {r['rank']}: {r['images']} images in {r['seconds']:.1f} s "
            f"({r['images_per_second']:.2f} images/s), {r['blocks_skipped']} blocks already done"
            + (
                f", {r['blocks_replaced']} shards sampled again (they did not match the run's record)"
                if r.get("blocks_replaced")
                else ""
            ),
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        escape(
            f"wrote {out / report['npz']} ({report['images']} images, {report['dtype']} "
            f"{tuple(report['shape'])}) and {out / 'report.json'}; {chosen.describe()}"
        ),
        highlight=False,
        soft_wrap=True,
    )
