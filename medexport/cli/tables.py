"""Tables that stay whole: a rich table where it fits the output's width (a terminal's, $COLUMNS, or 100 columns
when piped), else the same cells as a list, one block per row, "column: value" per line: no name is ever cut."""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def print_table(table: Table, console: Console | None = None) -> None:
    """Print ``table`` on ``console`` (the CLI's stdout console by default), as a list if it does not fit."""
    if console is None:
        from .main import console
    wide = console.options.update(width=10_000, max_width=10_000)  # the table's natural width, not clipped to ours
    if Measurement.get(console, wide, table).maximum <= console.width:
        console.print(table)
        return
    if table.title:
        console.print(table.title, style="bold", highlight=False, soft_wrap=True)
    headers = [str(c.header) for c in table.columns]
    cells = [list(c.cells) for c in table.columns]
    for r in range(table.row_count):
        lines = []
        for header, column in zip(headers, cells):
            value = column[r] if r < len(column) else ""
            if value == "":
                continue
            lines.append(f"{header}: {value}" if header else str(value))
        console.print(("- " + "\n  ".join(lines)) if lines else "-", highlight=False, soft_wrap=True)
