"""``medexport build``, ``verify`` and ``inspect``: making engine bundles and checking what they hold."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..backend import registry
from ..bundle.settings import (
    DEFAULT_BATCH,
    DEFAULT_OUTPUT_ROOT,
    DEMO_BATCH,
    PRECISION_CHOICES,
    BuildSettings,
    ModelSource,
)
from ..core.batch import BatchRange
from ..core.config import DEFAULT_IMAGE_SIZE, FULL, MODEL_NAMES, count_name
from ..core.precision import precision
from ..demo import DEFAULT_DEMO, demo_names
from ..demo import NAME as DEMO_NAME
from ..errors import BundleError, ConfigError
from .main import cli, console, parse_int_list, short_help
from .tables import print_table

log = logging.getLogger("medexport")
DEFAULT_MEDIATORS = "16,32,64"
#: A seed torch.manual_seed takes (a 64-bit integer), from 0.
SEED = click.IntRange(0, 2**63 - 1)


def _parse_checkpoints(values: tuple[str, ...], attention: str = "mediator") -> list[tuple[int, Path]]:
    """(count, path) per --checkpoint: COUNT=PATH for mediator models, PATH alone for the one full-attention
    model of --attention full."""
    if attention == "full":
        if len(values) > 1:
            raise click.BadParameter(
                f"--attention full builds one full-attention model; {len(values)} checkpoints were given",
                param_hint="--checkpoint",
            )
        out = []
        for v in values:
            m = re.fullmatch(r"\s*(\d+)\s*=\s*(.+)", v)
            if m and not Path(v).exists():
                raise click.BadParameter(
                    f"{v!r}: a full-attention model has no mediator count; give the path alone "
                    f"(--checkpoint {m.group(2)})",
                    param_hint="--checkpoint",
                )
            out.append((FULL, Path(v)))
        return out
    out = []
    for v in values:
        m = re.fullmatch(r"\s*(\d+)\s*=\s*(.+)", v)
        if not m:
            raise click.BadParameter(
                f"{v!r} is not COUNT=PATH (e.g. 16=models/sit-m16.pt); a vanilla DiT/SiT "
                f"checkpoint is built with --attention full --checkpoint PATH",
                param_hint="--checkpoint",
            )
        if int(m.group(1)) == FULL:
            raise click.BadParameter(
                f"{v!r}: 0 is not a mediator count; a full-attention model is built with "
                f"--attention full --checkpoint {m.group(2)}",
                param_hint="--checkpoint",
            )
        out.append((int(m.group(1)), Path(m.group(2))))
    return out


def demo_twin_weights(demo: str | None, seed: int) -> Path:
    """The demo's vanilla twin's weights: the demo's architecture with full attention, seeded random weights, kept
    as ``engines/<demo>-full-random-<seed>.safetensors`` (written once, under a temporary name then renamed), so
    the twin's bundle is keyed and verified like any checkpoint's."""
    from ..demo import demo_bundle_name, demo_checkpoints, demo_folder
    from ..model import create_model, read_checkpoint, save_checkpoint

    path = DEFAULT_OUTPUT_ROOT / f"{demo_bundle_name(demo)}-full-random-{seed}.safetensors"
    if path.is_file():
        return path
    first = next(iter(demo_checkpoints(None, demo_folder(demo)).values()))
    config = read_checkpoint(first)[1].config.with_mediators(FULL)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(create_model(config, init="random", seed=seed), path, form="safetensors")


def default_output(
    model_name: str | None,
    image_size: int,
    checkpoints: list[tuple[int, Path]],
    precision: str = "fp32",
    attention: str = "mediator",
    demo: str | None = None,
) -> Path:
    """engines/<name>, with ``-full`` for a vanilla twin and ``-<precision>`` for any precision but fp32 (one
    bundle per precision)."""
    base = _default_name(model_name, image_size, checkpoints, demo)
    if attention == "full" and not checkpoints:
        base = base.with_name(f"{base.name}-full")
    return base if precision == "fp32" else base.with_name(f"{base.name}-{precision}")


def _default_name(
    model_name: str | None, image_size: int, checkpoints: list[tuple[int, Path]], demo: str | None = None
) -> Path:
    if checkpoints:
        # Named by content too: trainers name checkpoints by step (0400000.pt), so two runs share file names.
        from ..bundle.settings import content_key
        from ..core.files import file_sha256

        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", checkpoints[0][1].stem)
        key = content_key(*sorted((n, file_sha256(p)) for n, p in checkpoints if Path(p).is_file()))[:8]
        return DEFAULT_OUTPUT_ROOT / f"{stem}-{key}"
    if model_name is None:
        from ..demo import demo_bundle_name

        return DEFAULT_OUTPUT_ROOT / demo_bundle_name(demo)
    return DEFAULT_OUTPUT_ROOT / f"{model_name.replace('/', '-')}-{image_size}-random"


def backend_options(command):
    """The build options each backend declares (``EngineBackend.options``), one click option each."""
    for _, option in reversed(registry.options()):
        if option.kind == "flag":
            decl = click.option(
                f"--{option.flag}/--no-{option.flag}",
                option.name,
                default=option.default,
                show_default=True,
                help=option.help,
            )
        else:
            lo, hi = option.choices or (None, None)
            decl = click.option(
                f"--{option.flag}",
                option.name,
                default=option.default,
                show_default=True,
                type=click.IntRange(lo, hi),
                help=option.help,
            )
        command = decl(command)
    return command


@cli.command(short_help=short_help("build"))
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    metavar="N=PATH",
    help="Checkpoint of the N-mediator model (repeat per count); with --attention full, the PATH of a "
    "vanilla DiT/SiT checkpoint.",
)
@click.option(
    "--attention",
    type=click.Choice(["mediator", "full"]),
    default="mediator",
    show_default=True,
    help="full: the vanilla twin, full self-attention DiT/SiT of the same size (random weights with "
    "--model, or a public DiT/SiT checkpoint), to compare against with `medexport bench`.",
)
@click.option(
    "--weights",
    type=click.Choice(["ema", "model"]),
    default="ema",
    show_default=True,
    help="Which weights of trainer checkpoints to take.",
)
@click.option(
    "--model",
    "model_name",
    default=None,
    metavar="NAME",
    help=f"Random weights of a named config ({', '.join(n for n in MODEL_NAMES if n.startswith('SiT'))}), "
    f"for benchmarking. Without --model and --checkpoint: the shipped Fashion-MNIST demo model.",
)
@click.option(
    "--demo",
    "demo_name",
    type=click.Choice(demo_names()),
    default=DEFAULT_DEMO,
    show_default=True,
    help="Which shipped demo model family to build when neither --model nor --checkpoint is given.",
)
@click.option("--image-size", default=DEFAULT_IMAGE_SIZE, show_default=True, help="Image side (random weights).")
@click.option(
    "--mediators",
    default=None,
    help=f"Counts to build [default: those of --checkpoint, the demo's, or {DEFAULT_MEDIATORS} with --model].",
)
@click.option(
    "--init-seed", "seed", default=0, show_default=True, type=SEED, help="Seed of the random weights (--model)."
)
@click.option("--seed", "seed_alias", type=SEED, default=None, hidden=True)
@click.option(
    "--backend",
    type=click.Choice(registry.build_choices()),
    default="auto",
    show_default=True,
    help="auto: the fastest that builds here (TensorRT with a CUDA GPU, else ONNX Runtime).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISION_CHOICES),
    default="fp32",
    show_default=True,
    help="fp32/fp16/bf16: the exported dtype. int8: dynamic int8, the fastest on a CPU. int8-static, fp8: "
    "calibrated Q/DQ (need --calibration); fp8 builds only with TensorRT on Ada/Hopper.",
)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Calibration set for int8-static / fp8, from `medexport calibrate`.",
)
@click.option("--onnx-only", is_flag=True, help="Export (and quantise) the ONNX graphs only: no engines.")
@click.option(
    "--batch",
    default=None,
    metavar="MIN:OPT:MAX",
    help=f"Batch sizes the engines accept, counting the CFG doubling [default: {DEFAULT_BATCH}; "
    f"{DEMO_BATCH} for the demo].",
)
@backend_options
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Bundle folder [default: engines/{DEMO_NAME}, engines/<model>-<size>-random or "
    f"engines/<checkpoint>-<content hash>].",
)
@click.option("--force", is_flag=True, help="Redo every export and engine, even those up to date.")
def build(
    checkpoints,
    attention,
    weights,
    model_name,
    demo_name,
    image_size,
    mediators,
    seed,
    seed_alias,
    backend,
    precision,
    calibration,
    onnx_only,
    batch,
    output,
    force,
    **backend_settings,
) -> None:
    """Export each mediator count to ONNX and build engines into a bundle.

    With no model arguments it builds the demo model that ships with medexport (Fashion-MNIST, 4, 8 and 16
    mediators) into engines/fashion-mnist-demo; --demo fashion-mnist-p2 builds the 196-token family (4, 16 and 48
    mediators) into engines/fashion-mnist-p2-demo.
    """
    seed = seed if seed_alias is None else seed_alias  # --seed: the earlier spelling
    ckpts = _parse_checkpoints(checkpoints, attention)
    demo = not ckpts and model_name is None
    full = attention == "full"
    ctx = click.get_current_context()
    size_given = ctx.get_parameter_source("image_size") is not click.core.ParameterSource.DEFAULT
    if not demo and ctx.get_parameter_source("demo_name") is not click.core.ParameterSource.DEFAULT:
        raise ConfigError(
            f"--demo {demo_name} builds a shipped demo model; --model and --checkpoint build other "
            f"weights: give one of them"
        )
    if full and mediators is not None:
        raise ConfigError(
            f"--attention full builds the vanilla model, which has no mediators: drop --mediators "
            f"{mediators} (a mediator bundle and its vanilla twin are two bundles; `medexport bench "
            f"BUNDLE --against VANILLA` compares them)"
        )
    twin_of_demo = full and demo
    if twin_of_demo:  # the demo's vanilla twin: its architecture with full attention and random weights
        ckpts = [(FULL, demo_twin_weights(demo_name, seed))]
        output = output or default_output(None, image_size, [], precision, "full", demo_name)
        demo = False
    try:
        batch_range = BatchRange.parse(batch) if batch else DEMO_BATCH if demo else DEFAULT_BATCH
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--batch") from None
    if ckpts and model_name is not None:
        raise ConfigError("--model (random weights) and --checkpoint exclude each other: give one of them")
    if demo:
        from ..demo import demo_checkpoints, demo_counts, demo_folder

        folder = demo_folder(demo_name)
        counts = parse_int_list(mediators, "--mediators") if mediators else demo_counts(folder)
        ckpts = list(demo_checkpoints(counts, folder).items())
    if ckpts:
        counts = [n for n, _ in ckpts]
        if mediators is not None and sorted(parse_int_list(mediators, "--mediators")) != sorted(counts):
            raise ConfigError(
                f"--mediators {mediators} does not match the counts of --checkpoint "
                f"({', '.join(map(str, counts))}): drop --mediators or give one checkpoint per count"
            )
        sources = [
            ModelSource(n, checkpoint=p, weights=weights, expect_image_size=image_size if size_given else None)
            for n, p in ckpts
        ]
    else:
        counts = [FULL] if full else parse_int_list(mediators or DEFAULT_MEDIATORS, "--mediators")
        if not full and FULL in counts:
            raise click.BadParameter(
                "0 is not a mediator count; the vanilla model (full attention) is built "
                "into a bundle of its own with --attention full",
                param_hint="--mediators",
            )
        sources = [ModelSource(n, model_name=model_name, image_size=image_size, seed=seed) for n in counts]
    settings = BuildSettings(
        backend=backend,
        precision=precision,
        batch=batch_range,
        backend_options=backend_settings,
        calibration=calibration,
        onnx_only=onnx_only,
    )
    out = output or default_output(model_name, image_size, [] if demo else ckpts, precision, attention, demo_name)
    from ..bundle.build import build_bundle

    report = build_bundle(sources, out, settings, force=force)
    table = Table(title=escape(f"bundle {report.path} ({report.backend or 'ONNX only'}, {precision})"))
    for col in ("mediators", "onnx", "engine", "seconds"):
        table.add_column(col, justify="right" if col != "engine" else "left")
    for r in report.counts:
        table.add_row(
            count_name(r.mediators),
            "exported" if r.exported else "up to date",
            ", ".join([f"{b} built" for b in r.engines_built] + [f"{b} up to date" for b in r.engines_kept]),
            f"{r.seconds:.1f}",
        )
    print_table(table)
    console.print(escape(f"backend: {report.backend_reason}"), highlight=False, soft_wrap=True)
    if twin_of_demo:  # sampled as the demo is (its schedule aside: the twin has one model), so bench compares alike
        from ..bundle.build import record_sampling
        from ..demo import demo_card, demo_folder

        recommended = dict(demo_card(demo_folder(demo_name)).get("sampling") or {})
        recommended.pop("schedule", None)
        record_sampling(report.path, recommended)
        console.print(
            "[yellow]the demo's vanilla twin has random weights: it is for speed comparisons only "
            "(`medexport bench`), its images are noise[/]",
            soft_wrap=True,
        )
    if report.random_weights:
        console.print("[yellow]warning: random weights — for benchmarking only; outputs are noise.[/]")


@cli.command(short_help=short_help("verify"))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--backend",
    "backends",
    type=click.Choice(registry.engine_names()),
    multiple=True,
    help="Only engines of this backend (repeatable) [default: all].",
)
@click.option("--input-seed", "seed", default=0, show_default=True, type=SEED, help="Seed of the random test inputs.")
@click.option("--seed", "seed_alias", type=SEED, default=None, hidden=True)
def verify(bundle: Path, backends: tuple[str, ...], seed: int, seed_alias: int | None) -> None:
    """Run every engine against the PyTorch model it was built from; exit 1 on any failure."""
    seed = seed if seed_alias is None else seed_alias  # --seed: the earlier spelling
    from .engines import torch_installed

    if not torch_installed():  # no reference to compare against: the checks that need none
        _verify_without_reference(bundle, backends, seed)
        return
    from ..bundle import Bundle, verify_bundle

    b = Bundle(bundle)
    results = verify_bundle(b, backends=list(backends) or None, seed=seed)
    table = Table(title=escape(f"verify {bundle}"))
    for col in ("mediators", "backend", "precision", "cases", "max abs err", "max rel err", "tolerance", "result"):
        table.add_column(col, justify="right")
    for r in results:
        verdict = "[green]PASS[/]" if r.passed else "[red]FAIL[/]"
        table.add_row(
            count_name(r.mediators),
            r.backend,
            r.precision,
            str(r.cases),
            f"{r.max_abs:.3g}",
            f"{r.max_rel:.3g}",
            f"{r.tolerance:g}",
            verdict,
        )
    print_table(table)
    precisions = sorted({r.precision for r in results})
    console.print(
        f"tolerance: the largest relative error (max |engine - reference| / max |reference| per batch) "
        f"accepted for {', '.join(f'{p} {precision(p).tolerance:g}' for p in precisions)}"
        + (
            "; calibrated engines run on rows of their calibration data, the rest on random inputs"
            if any(p in ("int8-static", "fp8") for p in precisions)
            else ""
        ),
        highlight=False,
        soft_wrap=True,
    )
    for r in results:
        if r.error:
            console.print(
                f"[red]{escape(r.backend)} {r.mediators}:[/] {escape(r.error)}", highlight=False, soft_wrap=True
            )
    if b.missing:
        console.print(
            f"[yellow]incomplete bundle: {', '.join(map(str, b.missing))} mediators were requested but "
            f"not built; run the build again[/]",
            soft_wrap=True,
        )
    if not results or not all(r.passed for r in results):
        raise SystemExit(1)


def _verify_without_reference(bundle: Path, backends: tuple[str, ...], seed: int) -> None:
    """The base install's verify: every ONNX Runtime engine's files against their hashes, then one forward of each
    on random inputs (finite, the right shape); the comparison with PyTorch needs torch and is said to be
    skipped. Exit 1 on any failure."""
    import numpy as np

    from ..core.manifest import Manifest
    from ..extras import INSTALL
    from ..lite import LitePipeline

    wanted = set(backends) or {"onnxruntime"}
    if wanted - {"onnxruntime"}:
        from .engines import needs_extra

        raise needs_extra(f"verify --backend {', '.join(sorted(wanted - {'onnxruntime'}))}")
    manifest = Manifest.read(bundle)
    pipe = LitePipeline.from_bundle(bundle, threads=1)  # checks every engine file's hash, opens each session
    rng = np.random.default_rng(seed)
    shape = pipe.shape
    table = Table(title=escape(f"verify {bundle} (no PyTorch reference)"))
    for col in ("mediators", "backend", "files", "output", "result"):
        table.add_column(col, overflow="fold")
    failed = False
    for n, forward in pipe.forwards.items():
        x = rng.standard_normal((2, shape.channels, shape.size, shape.size), dtype=np.float32)
        t = rng.random(2, dtype=np.float32)
        y = rng.integers(0, shape.num_classes, 2).astype(np.int64)
        v = np.asarray(forward(x, t, y))
        ok = v.shape == x.shape and bool(np.isfinite(v).all())
        failed |= not ok
        table.add_row(
            count_name(n),
            "onnxruntime",
            "hashes match",
            f"{tuple(v.shape)}, finite"
            if ok
            else f"{tuple(v.shape)}, {'finite' if np.isfinite(v).all() else 'not finite'}",
            "[green]PASS[/]" if ok else "[red]FAIL[/]",
        )
    print_table(table)
    console.print(
        escape(f"the comparison with PyTorch was skipped: it needs torch ({INSTALL.format(extra='build')})"),
        highlight=False,
        soft_wrap=True,
    )
    if manifest.missing:
        console.print(
            f"[yellow]incomplete bundle: {', '.join(map(str, manifest.missing))} mediators were requested "
            f"but not built; run the build again[/]",
            soft_wrap=True,
        )
    if failed:
        raise SystemExit(1)


def build_in_words(build: dict) -> str:
    """A manifest's build settings as words: "precision fp32, opset 17, batch 1:2:8" (unset ones left out)."""
    parts = []
    for key, value in build.items():
        if value is None or value == {} or value == []:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        parts.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(parts) or "defaults"


def _grid(cfg) -> str:
    return "-" if cfg.is_full else "x".join(map(str, cfg.mediator_grid))


@cli.command(short_help=short_help("inspect"))
@click.argument("bundle", type=click.Path(path_type=Path))
def inspect(bundle: Path) -> None:
    """What a bundle holds: counts, backends, precisions, shapes, sizes, versions, runnable here or not."""
    from ..core.manifest import Manifest  # the typed manifest: no torch, so the base install inspects too

    b = Manifest.read(bundle)
    m = b.raw
    cfg = m["model"]
    # Paths and the manifest's texts are printed as text, not markup: a folder named "[/]" prints as it is
    console.print(
        f"[bold]{escape(str(bundle))}[/]"
        + escape(
            f"  format {b.format_version}, medexport "
            f"{b.medexport_version or 'unknown'}, updated "
            f"{b.updated or 'unknown'}"
        ),
        soft_wrap=True,
    )
    console.print(
        escape(
            f"model: depth {cfg['depth']}, width {cfg['hidden_size']}, heads {cfg['num_heads']}, patch "
            f"{cfg['patch_size']}, latent {cfg['in_channels']}x{cfg['input_size']}x{cfg['input_size']}, "
            f"{cfg['num_classes']} classes"
        ),
        soft_wrap=True,
    )
    console.print(escape(f"build: {build_in_words(b.build)}"), highlight=False, soft_wrap=True)
    data = b.data
    console.print(
        escape(
            "generates: "
            + (
                f"{data.get('dataset')} images in pixel space ({cfg['in_channels']}x"
                f"{cfg['input_size']}x{cfg['input_size']})"
                if data
                else "sd-vae latents (decode with `sample --vae`)"
            )
        ),
        highlight=False,
    )
    console.print(escape(f"recommended sampling: {b.sampling.describe()}"), highlight=False)
    table = Table()
    for col in ("mediators", "grid", "backend", "precision", "batch", "MB", "runs here"):
        table.add_column(col, overflow="fold")
    details = []
    for n in b.count_list:
        e = b.entry(n)
        src = e.source
        src_text = src.describe() if src.kind == "random" else f"{src.path} ({src.weights} weights)"
        details.append(f"{'full attention' if n == FULL else f'{n} mediators'}: from {src_text}")
        quant = e.onnx.quantization
        if quant:
            cal = quant.calibration
            details.append(
                f"  quantisation: {e.onnx.precision} = {quant.mode} {quant.dtype}, "
                f"{quant.quantized_layers} quantised linear layers, "
                f"{'per-channel' if quant.per_channel_weights else 'per-tensor'} weights; "
                + (
                    f"calibrated on {cal['path']} ({cal.get('mode')} mode, schedule {cal.get('schedule')}, "
                    f"{cal['rows']} rows)"
                    if cal
                    else "no calibration (dynamic)"
                )
            )
        if not e.engines:
            onnx_art = e.onnx
            details.append(f"  no engine: ONNX only ({', '.join(onnx_art.files)}), built with --onnx-only")
            table.add_row(
                count_name(n),
                _grid(e.config),
                "onnx only",
                onnx_art.precision,
                "-",
                f"{onnx_art.bytes(Path(bundle)) / 1e6:.1f}",
                "[yellow]no engine[/]",
            )
        for backend in e.backends:
            eng = e.engines[backend]
            ok, why = registry.get(backend).runnable(eng.record, eng.precision)
            if ok:
                try:
                    eng.check(Path(bundle))  # present and unchanged, not only compatible
                except BundleError as err:
                    ok, why = False, str(err)
            record = eng.record
            versions = ", ".join(
                f"{k} {v}" for k, v in {**record.get("versions", {}), **record.get("hardware", {})}.items()
            )
            details.append(f"  {backend}: {', '.join(eng.files)} ({versions})")
            table.add_row(
                count_name(n),
                _grid(e.config),
                backend,
                eng.precision,
                str(eng.batch or "-"),
                f"{eng.bytes(Path(bundle)) / 1e6:.1f}",
                "[green]yes[/]" if ok else f"[red]no[/]: {escape(why)}",
            )
    print_table(table)
    for line in details:
        console.print(escape(line), highlight=False, soft_wrap=True)
    if b.missing:
        console.print(f"[yellow]incomplete: {', '.join(map(str, b.missing))} mediators requested but not built[/]")
