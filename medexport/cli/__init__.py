"""Command-line interface; importing this package registers every command on :data:`cli`."""

from . import bundle_cmds, eval_cmd, model_cmds, sample_cmd  # noqa: F401  (registers commands)
from .main import cli


def main() -> None:
    cli()


__all__ = ["cli", "main"]
