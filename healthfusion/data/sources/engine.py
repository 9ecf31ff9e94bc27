"""The table engine behind the large-table readers: DuckDB, the only module that imports it.

DuckDB was chosen over polars by measurement (docs/data-sources.md, "Choosing the table engine"): on a
2-million-row ``chartevents.csv.gz`` the same filter + hourly group-by took 4.0 s in DuckDB and 10.3 s in
polars' streaming engine (9.3 s eager, which also decompresses the whole file into memory first). DuckDB
decompresses gzip as a stream, parses with explicit column types (nothing is guessed from the first rows),
and keeps its memory under :data:`MEMORY_LIMIT` by spilling sorts and aggregations to a temporary folder.

:func:`connect` opens a connection with those limits; :func:`scan` gives the SQL of a table file (CSV,
CSV.gz or Parquet) with the columns cast to the requested kinds; :func:`run` executes a query, logging its
progress when asked, and turns DuckDB's errors into :class:`~healthfusion.data.errors.SourceError` naming the
file (and, for a value that does not parse, the column and line).

Example::

    con = connect()
    sql = f"SELECT count(*) FROM {scan(con, path, {'itemid': 'int'})}"
    run(con, sql, path, {"itemid": "int"}).fetchall()
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import duckdb

from healthfusion.data.errors import SourceError
from healthfusion.data.sources.io import _check_columns, _csv_header, _locate_bad_value, _unreadable

log = logging.getLogger(__name__)

MEMORY_LIMIT = "512MB"  # DuckDB's buffer memory; sorts and aggregations beyond it spill to disk
MEMORY_ENV = "HEALTHFUSION_ENGINE_MEMORY"  # overrides MEMORY_LIMIT, e.g. HEALTHFUSION_ENGINE_MEMORY=2GB
PROGRESS_SECONDS = 5.0  # how often a long query logs its progress
# column kinds (as in io.stream_table) -> DuckDB types
SQL_TYPES = {"int": "BIGINT", "float": "DOUBLE", "str": "VARCHAR", "time": "TIMESTAMP"}


def connect(memory_limit: str | None = None, spill_dir: Path | None = None,
            threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with bounded memory.

    Parameters
    ----------
    memory_limit : str, optional
        DuckDB's memory limit (default: ``$HEALTHFUSION_ENGINE_MEMORY``, else :data:`MEMORY_LIMIT`); larger
        intermediate results spill to disk.
    spill_dir : Path, optional
        Where spill files go (default: a ``healthfusion-duckdb`` folder in the system temporary folder).
    threads : int, optional
        Worker threads (default: the CPUs this process may use).
    """
    con = duckdb.connect(":memory:")
    spill = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir()) / "healthfusion-duckdb"
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = memory_limit or os.environ.get(MEMORY_ENV) or MEMORY_LIMIT
    try:
        con.execute(f"SET memory_limit = {quote(limit)}")
    except duckdb.Error as exc:
        raise ValueError(f"Memory limit {limit!r} (from ${MEMORY_ENV} or the caller) is not a size; "
                         "give one like 512MB or 2GB.") from exc
    con.execute(f"SET temp_directory = {quote(str(spill))}")
    con.execute(f"SET threads = {int(threads or 1)}")
    con.execute("SET preserve_insertion_order = false")  # lets scans stream without holding rows in order
    return con


def scan(path: Path, columns: dict[str, str]) -> str:
    """The SQL of table file ``path`` restricted to ``columns`` (name -> ``"int"``, ``"float"``, ``"str"``
    or ``"time"``), each cast to its kind, plus nothing else.

    CSV (``.csv``, ``.csv.gz``) is read with an explicit schema: the requested columns typed, every other
    column text, nothing sniffed; empty fields are nulls. Parquet columns are cast to the requested kinds
    (times stored as text are parsed).

    Raises
    ------
    SourceError
        If the file is empty or lacks a requested column (naming the columns it has).
    """
    path = Path(path)
    if path.suffix == ".parquet":
        names = _parquet_names(path)
        _check_columns(path, names, columns)
        cols = ", ".join(f"CAST({ident(c)} AS {SQL_TYPES[k]}) AS {ident(c)}" for c, k in columns.items())
        return f"(SELECT {cols} FROM read_parquet({quote(str(path))}))"
    header = _csv_header(path, list(columns))
    _check_columns(path, header, columns)
    if len(set(header)) != len(header):
        raise SourceError(f"File {path} has a repeated column name in its header {header[:20]}; "
                          "give each column its own name.")
    cols = ", ".join(ident(c) for c in columns)
    return f"(SELECT {cols} FROM {read_csv(path, {c: SQL_TYPES[columns.get(c, 'str')] for c in header})})"


def read_csv(path: Path, types: dict[str, str]) -> str:
    """DuckDB's reader of CSV ``path`` (comma-separated, ``"``-quoted, with a header line) with the given SQL
    type of every column in file order: nothing is sniffed, empty fields are nulls."""
    schema = ", ".join(f"{quote(c)}: {quote(t)}" for c, t in types.items())
    return (f"read_csv({quote(str(path))}, header = true, auto_detect = false, delim = ',', quote = '\"', "
            f"escape = '\"', columns = {{{schema}}})")


def run(con: duckdb.DuckDBPyConnection, sql: str, path: Path, columns: dict[str, str],
        progress: str | None = None) -> duckdb.DuckDBPyConnection:
    """Execute ``sql`` (which reads ``path`` through :func:`scan` with ``columns``); return the connection
    with its result pending. With ``progress`` (a label), log DuckDB's progress every
    :data:`PROGRESS_SECONDS` while it runs.

    Raises
    ------
    SourceError
        When DuckDB cannot read or convert a value of ``path``: naming the column and line of the value
        (CSV) or DuckDB's own message otherwise.
    """
    if not progress:
        return _execute(con, sql, path, columns)
    failure: list[BaseException] = []

    def work():
        try:
            _execute(con, sql, path, columns)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            failure.append(exc)

    worker = threading.Thread(target=work, name="healthfusion-duckdb", daemon=True)
    start = time.perf_counter()
    worker.start()
    while worker.is_alive():
        worker.join(PROGRESS_SECONDS)
        if worker.is_alive():
            done = con.query_progress()
            if done >= 0:
                log.info("%s: %.0f%% read (%.0f s)", progress, done, time.perf_counter() - start)
    if failure:
        raise failure[0]
    return con


def _execute(con, sql: str, path: Path, columns: dict[str, str]):
    try:
        return con.execute(sql)
    except duckdb.ConversionException as exc:
        if Path(path).suffix == ".parquet":
            raise SourceError(f"File {path}: a value cannot be read as its column's type ({_first_line(exc)}); "
                              f"expected {columns}.") from exc
        raise _locate_bad_value(Path(path), columns, exc) from exc
    except duckdb.InvalidInputException as exc:
        message = _first_line(exc)
        if Path(path).suffix != ".parquet" and ("CSV" in message or "csv" in message):
            raise SourceError(f"File {path} could not be parsed as CSV: {message}.") from exc
        raise SourceError(f"File {path} could not be read ({message}); is it a complete, uncorrupted file?") \
            from exc
    except duckdb.IOException as exc:
        raise _unreadable(Path(path), exc) from exc
    except duckdb.OutOfMemoryException as exc:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        raise MemoryError(f"Reading {path} needed more memory than the table engine's limit ({limit}) and could "
                          f"not spill enough to disk; set {MEMORY_ENV} higher (e.g. 2GB) or free disk space in "
                          "the temporary folder.") from exc


def _parquet_names(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"File {path} is not readable Parquet ({exc}).") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
