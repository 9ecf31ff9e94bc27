"""Render DataFrames as rich tables."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table


def print_frame(console: Console, frame: pd.DataFrame, title: str = "", max_rows: int = 60,
                columns: Sequence[str] | None = None) -> None:
    """Print ``frame`` as a table (floats to 3 decimals, at most ``max_rows`` rows); ``columns``: those of them
    the frame has, in that order (default: all)."""
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    table = Table(title=title, show_lines=False)
    for col in frame.columns:
        table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(frame[col]) else "left")
    for row in frame.head(max_rows).itertuples(index=False):
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    if len(frame) > max_rows:
        console.print(f"... {len(frame) - max_rows} more rows")
