"""Reading raw tables with clear errors: the file, the column or the row, and the fix.

Small tables are read whole (:func:`read_table`); large ones are streamed in blocks of bounded size
(:func:`stream_table`), from CSV (``.csv``, ``.csv.gz``) or Parquet.
:func:`~healthfusion.data.sources.convert.convert_to_parquet` turns a folder of raw CSV tables into Parquet
once, after which every reader that uses :func:`find_table` reads the Parquet copy (it is preferred when both
exist), typically an order of magnitude faster.
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.errors import SourceError
from healthfusion.data.sources.read_errors import READ_ERRORS, is_utf8_error, not_utf8, read_error, reading

log = logging.getLogger(__name__)

STREAM_BLOCK_BYTES = 1 << 20  # CSV block read at a time (about 10,000 MIMIC-IV chartevents rows); larger
# blocks were no faster here and the reader keeps several in flight (16 MiB blocks: +380 MB resident)
PARQUET_BATCH_ROWS = 1 << 16  # Parquet rows read at a time (250,000: the same speed, +55 MB at peak)
# Column kinds of stream_table; "time" is an ISO 8601 timestamp ("2150-01-01 12:00:00").
_ARROW = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "time": pa.timestamp("us")}


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


def optional_table(folder: Path, name: str) -> Path | None:
    """The file of table ``name`` in ``folder`` (see :func:`find_table`), or None when there is none."""
    try:
        return find_table(folder, name)
    except SourceError:
        return None


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
        with reading(path):  # truncated, unreadable, not UTF-8: one error naming the file (and line)
            if path.suffix == ".parquet":
                df = pd.read_parquet(path, columns=list(columns) if columns else None)
            else:
                df = pd.read_csv(path, usecols=list(columns) if columns else None, dtype=dtypes, low_memory=False)
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"File {path} is empty; expected a table with columns {list(required)}.") from exc
    except SourceError:
        raise
    except ValueError as exc:
        raise SourceError(f"File {path} could not be read as a table: {exc}.") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SourceError(f"File {path} lacks column(s) {missing}; it has {list(df.columns)[:20]}.")
    return df


def parse_times(values: pd.Series, lines, path: Path, column: str) -> pd.Series:
    """ISO timestamps -> datetime; empty stays NaT; an unparseable one raises naming file, column and line
    (``lines`` gives the file line of each value)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    parsed, bad = _iso_times(values)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise _bad_time(path, column, int(np.asarray(lines)[i]), values.iloc[i])
    return parsed


def keep_rows(t: pa.Table, mask: pa.ChunkedArray, acc: RowAccounting, table: str, reason: str) -> pa.Table:
    """Rows of ``t`` where ``mask`` is true (null counts as false); the others are counted as ``reason``."""
    mask = pc.fill_null(mask, False)
    kept = t.filter(mask)
    acc.drop(table, reason, t.num_rows - kept.num_rows)
    return kept


# ------------------------------------------------------------------------------------------ streaming reader
def stream_table(path: Path, columns: dict[str, str], row_groups: range | None = None) -> Iterator[pa.Table]:
    """Blocks of ``columns`` (name -> ``"int"``, ``"float"``, ``"str"`` or ``"time"``) of a CSV (.csv,
    .csv.gz) or Parquet table; with ``row_groups`` (Parquet only: a range of row-group indices, see
    :func:`~healthfusion.data.partition.split_row_groups`) only the rows of those row groups.

    Each block is a pyarrow Table of about :data:`PARQUET_BATCH_ROWS` rows with the requested columns (int64,
    float64, string, timestamp[us]) plus ``_row``, the 0-based data row in the file (the CSV line is
    ``_row + 2``). CSV is read :data:`STREAM_BLOCK_BYTES` at a time. Memory is bounded by these sizes, not by
    the file size.

    Raises
    ------
    SourceError
        If the file is empty, lacks a column (naming the columns it has), or a number or time cannot be
        parsed (naming the column and line).
    """
    path = Path(path)
    if path.suffix == ".parquet":
        yield from _stream_parquet(path, columns, row_groups)
        return
    if row_groups is not None:
        raise ValueError(f"{path} is not Parquet: only a Parquet table is read by row groups.")
    _check_columns(path, _csv_header(path, list(columns)), columns)
    options = pacsv.ConvertOptions(include_columns=list(columns), strings_can_be_null=True,
                                   column_types={c: _ARROW[k] for c, k in columns.items()})
    row, waiting = 0, []

    def joined() -> pa.Table:
        t = pa.Table.from_batches(waiting).combine_chunks()
        waiting.clear()
        return t.append_column("_row", pa.array(np.arange(row, row + t.num_rows)))

    try:
        with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=STREAM_BLOCK_BYTES),
                            convert_options=options) as reader:
            # small blocks keep the reader's memory low; yielded joined, they keep the caller's calls few
            for batch in reader:
                waiting.append(batch)
                if sum(b.num_rows for b in waiting) >= PARQUET_BATCH_ROWS:
                    t = joined()
                    row += t.num_rows
                    yield t
            if waiting:
                yield joined()
    except pa.ArrowInvalid as exc:
        raise (not_utf8(path) if is_utf8_error(exc) else _locate_bad_value(path, columns, exc)) from exc
    except READ_ERRORS as exc:
        raise read_error(path, exc) from exc


def _stream_parquet(path: Path, columns: dict[str, str], row_groups: range | None = None) -> Iterator[pa.Table]:
    try:
        with reading(path):
            pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering doubled memory and time here
    except pa.ArrowInvalid as exc:
        raise SourceError(f"File {path} is not readable Parquet ({exc}).") from exc
    _check_columns(path, pf.schema_arrow.names, columns)
    groups = range(pf.num_row_groups) if row_groups is None else row_groups
    if groups.step != 1 or groups.start < 0 or groups.stop > pf.num_row_groups:
        raise ValueError(f"Row groups {groups} are not a contiguous range of the {pf.num_row_groups} of {path}.")
    if len(groups) == 0:
        return
    row = sum(pf.metadata.row_group(g).num_rows for g in range(groups.start))  # _row counts from the file's start
    for batch in _parquet_batches(path, pf, list(columns), list(groups)):
        t = pa.Table.from_batches([batch]).replace_schema_metadata(None)  # pandas metadata would undo casts
        for name, kind in columns.items():
            if kind == "str" and pa.types.is_timestamp(t[name].type):
                continue
            if t[name].type != _ARROW[kind]:
                t = t.set_column(t.schema.get_field_index(name), name, _cast(t[name], kind, path, name, row))
        yield t.append_column("_row", pa.array(np.arange(row, row + t.num_rows)))
        row += t.num_rows


def _parquet_batches(path: Path, pf: pq.ParquetFile, columns: list[str],
                     row_groups: list[int]) -> Iterator[pa.RecordBatch]:
    with reading(path):
        try:
            yield from pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns, row_groups=row_groups)
        except pa.ArrowInvalid as exc:
            raise SourceError(f"File {path} is truncated or corrupt Parquet ({exc}); convert it again.") from exc


def _cast(values: pa.ChunkedArray, kind: str, path: Path, name: str, row: int) -> pa.ChunkedArray:
    try:
        return pc.cast(values, _ARROW[kind])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        if kind == "time" and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            text = values.to_pandas()
            bad = _iso_times(text)[1]
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise _bad_time(path, name, row + i, text.iloc[i], where="row") from exc
        raise SourceError(f"File {path}, column {name!r}: cannot read it as {kind} ({exc}).") from exc


def _unreadable(path: Path, exc: Exception) -> SourceError:
    return SourceError(f"File {path} could not be read ({exc}); is it a complete, uncorrupted file?")


def _bad_time(path: Path, column: str, line: int, value, where: str = "line") -> SourceError:
    return SourceError(f"File {path}, column {column!r}, {where} {line}: cannot parse time {value!r}; "
                       "expected e.g. 2150-01-01 12:00:00.")


def _iso_times(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """ISO 8601 ``text`` parsed (NaT where empty or unparseable) and where a value could not be parsed."""
    parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
    return parsed, text.notna() & parsed.isna()


def _csv_header(path: Path, expected: list[str]) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as fh:
            header = next(csv.reader(fh), None)
    except READ_ERRORS as exc:
        raise read_error(path, exc) from exc
    if not header:
        wanted = f"columns {expected}" if expected else "a header line"
        raise SourceError(f"File {path} is empty; expected a table with {wanted}.")
    return header


def _check_columns(path: Path, names: list[str], columns: dict[str, str]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise SourceError(f"File {path} lacks column(s) {missing}; it has {list(names)[:20]}.")


def _locate_bad_value(path: Path, columns: dict[str, str], exc: Exception) -> SourceError:
    """Re-scan the numeric and time columns as text to name the line of a value that failed to convert; other
    parse errors (a row with the wrong number of fields, ...) are reported with pyarrow's own message."""
    typed = [c for c, k in columns.items() if k != "str"]
    options = pacsv.ConvertOptions(include_columns=typed, strings_can_be_null=True,
                                   column_types={c: pa.string() for c in typed})
    unparsed = SourceError(f"File {path} could not be parsed as CSV: {exc}.")
    row = 0
    try:
        with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=STREAM_BLOCK_BYTES),
                            convert_options=options) as reader:
            for batch in reader:
                df = batch.to_pandas()
                for col in typed:
                    kind = columns[col]
                    if kind == "time":
                        bad = _iso_times(df[col])[1]
                    else:
                        num = pd.to_numeric(df[col], errors="coerce")
                        bad = df[col].notna() & num.isna()
                        if kind == "int":
                            bad |= num.notna() & (num != np.floor(num))
                    if bad.any():
                        i = int(np.flatnonzero(bad.to_numpy())[0])
                        line, value = row + i + 2, df[col].iloc[i]
                        if kind == "time":
                            return _bad_time(path, col, line, value)
                        what = "an integer" if kind == "int" else "a number"
                        return SourceError(f"File {path}, column {col!r}, line {line}: {value!r} is not {what}.")
                row += len(df)
    except (pa.ArrowInvalid, OSError):
        return unparsed  # malformed beyond one value (e.g. a row with extra fields): pyarrow's message tells
    return unparsed
