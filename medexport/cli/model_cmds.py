"""``medexport flops`` and ``medexport info``: what a model costs and what a checkpoint holds."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from ..core.config import DEFAULT_IMAGE_SIZE, FULL, MODEL_NAMES, config_from_name
from ..core.flops import flops_table
from .main import cli, parse_int_list, short_help
from .tables import print_table

DEFAULT_MODEL = "SiT-S/2"


@cli.command(short_help=short_help("flops"))
@click.option(
    "--model",
    "model_name",
    default=DEFAULT_MODEL,
    show_default=True,
    metavar="NAME",
    help=f"Named config: {', '.join(n for n in MODEL_NAMES if n.startswith('SiT'))} (or DiT-*).",
)
@click.option(
    "--image-size", default=DEFAULT_IMAGE_SIZE, show_default=True, help="Image side in pixels (latent = 1/8)."
)
@click.option("--mediators", default="16,32,64", show_default=True, help="Comma-separated mediator counts.")
def flops(model_name: str, image_size: int, mediators: str) -> None:
    """GFLOPs per forward for each mediator count next to full self-attention."""
    counts = parse_int_list(mediators, "--mediators")
    if FULL in counts:  # the full-attention model is every row's baseline column, not a row of its own
        raise click.BadParameter(
            f"{FULL} is not a mediator count; the full-attention model (the vanilla twin, "
            f'`medexport build --attention full`) is the table\'s "full attention GFLOPs" '
            f"column, beside every count: drop {FULL} from --mediators",
            param_hint="--mediators",
        )
    base = config_from_name(model_name, mediators=counts[0], image_size=image_size)
    for n in counts:  # validate every count against the token grid, before any is costed
        base.with_mediators(n)
    rows = flops_table(base, counts)
    table = Table(
        title=f"{model_name} at {image_size}x{image_size} ({base.grid_size}x{base.grid_size} tokens, "
        f"N={base.num_tokens}): GFLOPs per forward, one sample"
    )
    table.add_column("mediators", justify="right")
    table.add_column("grid", justify="right")
    table.add_column("mediator GFLOPs", justify="right")
    table.add_column("full attention GFLOPs", justify="right")
    table.add_column("reduction", justify="right")
    for r in rows:
        rows_, cols = base.with_mediators(r["mediators"]).mediator_grid
        table.add_row(
            str(r["mediators"]),
            f"{rows_}x{cols}",
            f"{r['gflops']:.1f}",
            f"{r['full_gflops']:.1f}",
            f"{r['reduction_pct']:.1f}%",
        )
    print_table(table)


@cli.command(short_help=short_help("info"))
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--weights",
    type=click.Choice(["ema", "model"]),
    default="ema",
    show_default=True,
    help="Which weights of a trainer checkpoint to read.",
)
def info(checkpoint: str, weights: str) -> None:
    """The architecture, size and format of a mediator (or vanilla) DiT/SiT checkpoint."""
    from ..model import read_checkpoint  # torch: the build extra

    _, ck = read_checkpoint(checkpoint, weights=weights)
    c = ck.config
    table = Table(title=escape(checkpoint), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    fmt = {
        "trainer": "trainer dict (model/ema/opt/args)",
        "state_dict": "bare state dict (torch.save)",
        "safetensors": "safetensors state dict",
    }[ck.format]
    rows = [
        ("format", fmt),
        ("weights", ck.weights if ck.format == "trainer" else "the state dict itself"),
        ("parameters", f"{ck.num_parameters:,} ({ck.num_parameters / 1e6:.1f} M)"),
        ("depth / width / heads", f"{c.depth} / {c.hidden_size} / {c.num_heads} (head dim {c.head_dim})"),
        ("patch", str(c.patch_size)),
        ("latent", f"{c.in_channels} x {c.input_size} x {c.input_size} (image {c.image_size} px)")
        if ck.data is None
        else ("image", f"{c.in_channels} x {c.input_size} x {c.input_size} pixels ({ck.data.get('dataset')})"),
        ("tokens", f"{c.grid_size} x {c.grid_size} = {c.num_tokens}"),
        (
            "mediators",
            "none: full attention (a vanilla DiT/SiT; build it with --attention full)"
            if c.is_full
            else f"{c.mediators} ({c.mediator_grid[0]} x {c.mediator_grid[1]} grid)",
        ),
        ("classes", f"{c.num_classes} (+ null class)"),
        ("learn_sigma", str(c.learn_sigma)),
        ("mlp ratio", f"{c.mlp_ratio:g}"),
    ]
    if ck.train_steps is not None:
        rows.append(("train steps", str(ck.train_steps)))
    if ck.sampling is not None:
        from ..core.settings import SamplingSettings

        rows.append(("recommended sampling", SamplingSettings.from_dict(ck.sampling).describe()))
    for k, v in rows:
        table.add_row(k, v)
    print_table(table)
