"""The ``medexport`` command: a click group; each command lives in its own module of this package."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from ..errors import MedexportError, os_error_message
from ..extras import explain
from ..version import __version__


# Output to a file or a pipe is 100 columns wide (rich would otherwise assume 80); tables fold long cells
# (overflow="fold") rather than cut them.
def _width(stream) -> int | None:
    """None (rich's own: the terminal's, or $COLUMNS) on a terminal or where COLUMNS is set, else 100."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 100


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


#: Every command: the module that defines it and its one-line help. Commands are imported when run (or asked
#: for their own help), so ``medexport --help`` loads neither torch nor the exporter. A command whose module (or
#: whose run) needs a package of an extra that is not installed (torch: ``build``) says which extra to install.
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("bundle_cmds", "Export mediator counts to ONNX and build engines."),
    "verify": ("bundle_cmds", "Check every engine against the PyTorch model."),
    "inspect": ("bundle_cmds", "What a bundle holds and whether it runs here."),
    "calibrate": ("calibrate_cmd", "Record what each count's engine receives, for int8/fp8."),
    "sample": ("sample_cmd", "Generate from a bundle; --benchmark against PyTorch."),
    "generate": ("generate_cmd", "Many images (an FID set), sharded across torchrun ranks."),
    "eval": ("eval_cmd", "Judge a Fashion-MNIST bundle per schedule: accuracy, FD, cost."),
    "export-triton": ("serve_cmds", "A Triton Inference Server model repository from a bundle."),
    "bench": ("bench_cmd", "A bundle against its vanilla twin: ms, images/s, FLOPs, memory."),
    "tune": ("tune_cmd", "The best mediator schedule within a GFLOPs or latency budget."),
    "flops": ("model_cmds", "GFLOPs per forward against full attention."),
    "info": ("model_cmds", "Architecture and format of a checkpoint."),
}


def short_help(name: str) -> str:
    return COMMANDS[name][1]


class MedexportGroup(click.Group):
    """Loads commands on demand; prints MedexportError, the OSErrors a user causes (a full disk, a read-only
    --output, ...) and a missing extra's package (torch without ``medexport[build]``, ...) without a traceback and
    exits 1 (bugs keep theirs)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            try:
                importlib.import_module(f"{__package__}.{COMMANDS[name][0]}")  # its decorators register it here
            except ModuleNotFoundError as e:
                error = explain(e, f"medexport {name}")
                if error is None:
                    raise
                raise error from None
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (name, COMMANDS[name][1] if name in COMMANDS else self.commands[name].get_short_help_str())
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MedexportError as e:
            _fail(str(e))
        except ModuleNotFoundError as e:  # imported while the command runs
            error = explain(e, " ".join(filter(None, ("medexport", ctx.invoked_subcommand))))
            if error is None:
                raise
            _fail(str(error))
        except OSError as e:
            message = os_error_message(e)
            if message is None:
                raise
            _fail(message)


def _fail(message: str) -> None:
    """Print ``message`` as an error and exit 1; it is text, not markup: a path holding "[...]" prints as it is."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(1)


@click.group(cls=MedexportGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medexport")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose: int, quiet: bool) -> None:
    """Mediator DiT/SiT from PyTorch to deployed engines: build, verify, inspect, sample, eval."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose >= 2 else logging.INFO
    # Quiet by default: medexport's own progress at INFO; other libraries' INFO lines (ONNX Runtime's quantiser
    # logs one per tensor through the root logger) only with -v, their DEBUG with -vv.
    others = logging.WARNING if quiet or not verbose else level
    logging.basicConfig(
        level=others,
        format="%(message)s",
        datefmt="[%X]",
        force=True,
        handlers=[RichHandler(console=err_console, show_path=verbose > 1, markup=False)],
    )
    logging.getLogger("medexport").setLevel(level)
    for noisy in ("onnxscript", "onnx_ir", "torch", "polygraphy"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING) if verbose < 2 else level)


def parse_int_list(value: str, what: str) -> list[int]:
    """ "16,32,64" -> [16, 32, 64]; a clear error for anything else (counts given twice included)."""
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers, e.g. 16,32,64", param_hint=what
        ) from None
    if not items:
        raise click.BadParameter("give at least one value", param_hint=what)
    dup = sorted({v for v in items if items.count(v) > 1})
    if dup:
        raise click.BadParameter(f"{', '.join(map(str, dup))} given more than once", param_hint=what)
    return items


def parse_name_list(value: str, what: str, example: str) -> list[str]:
    """ "euler,heun" -> ["euler", "heun"]; a clear error for an empty list or a name given twice (``example``: a
    valid value, for the message)."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter(f"{value!r} names nothing: give at least one, e.g. {example}", param_hint=what)
    dup = sorted({v for v in items if items.count(v) > 1})
    if dup:
        raise click.BadParameter(f"{', '.join(dup)} given more than once", param_hint=what)
    return items
