"""What every command module shares: the console and the one-line error exit."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()


def fail(exc: Exception | str) -> None:
    """Print one clear error line and exit with status 2 (bad input, not a crash)."""
    console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)
