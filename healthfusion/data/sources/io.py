"""Reading raw tables with clear errors: the file, the column or the row, and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from healthfusion.data.errors import SourceError


def find_table(folder: Path, name: str) -> Path:
    """The file of table ``name`` in ``folder``: ``name.parquet``, ``name.csv`` or ``name.csv.gz`` (any case)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"Folder {folder} does not exist; pass the folder that holds the {name} table.")
    for suffix in (".parquet", ".csv.gz", ".csv"):
        for candidate in (name + suffix, name.upper() + suffix, name.lower() + suffix):
            path = folder / candidate
            if path.is_file():
                return path
    raise SourceError(f"Table {name!r} not found in {folder} (looked for {name}.parquet, .csv.gz, .csv).")


def read_table(
    path: Path,
    required: Sequence[str] = (),
    columns: Sequence[str] | None = None,
    dtypes: dict | None = None,
) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) or Parquet table, checking that ``required`` columns exist.

    Raises
    ------
    SourceError
        If the file is missing, empty, unreadable, or lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"File {path} does not exist.")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path, columns=list(columns) if columns else None)
        else:
            df = pd.read_csv(path, usecols=list(columns) if columns else None, dtype=dtypes, low_memory=False)
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"File {path} is empty; expected a table with columns {list(required)}.") from exc
    except ValueError as exc:
        raise SourceError(f"File {path} could not be read as a table: {exc}.") from exc
    except OSError as exc:
        raise SourceError(f"File {path} could not be read ({exc}); is it a complete, uncorrupted file?") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SourceError(f"File {path} lacks column(s) {missing}; it has {list(df.columns)[:20]}.")
    return df


def parse_times(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Parse timestamps; an unparseable one raises :class:`SourceError` naming the row and value."""
    parsed = pd.to_datetime(values, errors="coerce")
    bad = parsed.isna() & values.notna()
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise SourceError(
            f"File {path}, column {column!r}, row {i + 2} (line in file): cannot parse time {values.iloc[i]!r}; "
            "expected e.g. 2150-01-01 12:00:00."
        )
    return parsed
