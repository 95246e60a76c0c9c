"""``medexport export-triton``: a Triton Inference Server model repository from a bundle."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from .main import cli, console, short_help
from .options import DeferredChoice


@cli.command("export-triton", short_help=short_help("export-triton"))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Model repository folder (new or empty, or an earlier export with --force).",
)
@click.option(
    "--variant",
    type=DeferredChoice("..serve.triton", "variant_names"),
    default="python",
    show_default=True,
    help="How the per-count models are served, as each backend offers: python (ONNX Runtime in the python "
    "backend: any tritonserver), onnx (onnxruntime_onnx platform), tensorrt (tensorrt_plan; the "
    "bundle's TensorRT plans).",
)
@click.option(
    "--instances", default=1, show_default=True, type=click.IntRange(min=1), help="Instances of each per-count model."
)
@click.option(
    "--sampler-instances",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Instances of the sampler model (concurrent requests served at once).",
)
@click.option(
    "--queue-delay-us",
    default=500,
    show_default=True,
    type=click.IntRange(min=0),
    help="Dynamic batcher: how long a step call waits for others to merge with.",
)
@click.option("--force", is_flag=True, help="Replace an earlier export in --output.")
def export_triton_cmd(bundle, output, variant, instances, sampler_instances, queue_delay_us, force) -> None:
    """Write a Triton model repository: one model per mediator count and a sampler model (BLS) that runs the
    sampling loop over them."""
    from ..serve.triton import export_triton

    out = export_triton(
        bundle,
        output,
        variant=variant,
        force=force,
        instances=instances,
        sampler_instances=sampler_instances,
        queue_delay_us=queue_delay_us,
    )
    console.print(
        escape(f"wrote {out} ({variant}); start it with: tritonserver --model-repository {out}"),
        highlight=False,
        soft_wrap=True,
    )
