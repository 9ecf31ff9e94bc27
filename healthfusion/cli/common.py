"""What every command module shares: the console and the one-line error exit."""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

#: width of the console when the output is not a terminal (a file, a pipe, a CI log): wide enough that tables are
#: never cut; ``COLUMNS`` still wins when set
PIPE_WIDTH = 400


def make_console() -> Console:
    """The CLI's console: the terminal's width on a terminal; else ``COLUMNS`` or :data:`PIPE_WIDTH`, so tables
    written to a file or pipe are not cut at 80 columns."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=PIPE_WIDTH)


console = make_console()


def fail(exc: Exception | str) -> None:
    """Print one clear error line and exit with status 2 (bad input, not a crash)."""
    console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)
