"""Command-line interface: the :data:`cli` group loads each command's module when that command is used."""

from .main import cli


def main() -> None:
    cli()


__all__ = ["cli", "main"]
