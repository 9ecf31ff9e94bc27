"""The table engine behind the large-table readers: DuckDB, the only module that imports it.

DuckDB was chosen over polars by measurement (``benchmarks/table_engines.py``; docs/data-sources.md, "Choosing
the table engine"): on a 2-million-row ``chartevents.csv.gz`` the same filter + hourly group-by took 2.6 CPU
seconds in DuckDB fed by pyarrow (3.0 with DuckDB's own CSV reader) and 4.7 in polars, streaming or eager. DuckDB
reads with explicit column types (nothing is guessed from the first rows) and keeps its memory under
:data:`MEMORY_LIMIT` by spilling sorts and aggregations to a temporary folder. Table files (CSV, CSV.gz,
Parquet) are decoded by pyarrow's streaming reader and handed to DuckDB as Arrow batches (see :func:`scan`).

:func:`connect` opens a connection with those limits; :func:`scan` gives the SQL of a table file (CSV,
CSV.gz or Parquet) with the columns of the requested kinds; :func:`run` executes a query, logging its
progress when asked, and turns DuckDB's errors into :class:`~healthfusion.data.errors.SourceError` naming the
file (and, for a value that does not parse, the column and line).

Example::

    con = connect()
    sql = f"SELECT count(*) FROM {scan(con, path, {'itemid': 'int'})}"
    run(con, sql, path, {"itemid": "int"}).fetchall()
    close(con)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from healthfusion.data.errors import SourceError
from healthfusion.data.sources.io import (
    _ARROW,
    _check_columns,
    _csv_header,
    _locate_bad_value,
    _unreadable,
    stream_table,
)

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
        Where this connection's spill folder is made (default: the system temporary folder); the folder is
        removed by :func:`close`.
    threads : int, optional
        Worker threads (default: the CPUs this process may use).
    """
    con = duckdb.connect(":memory:")
    limit = memory_limit or os.environ.get(MEMORY_ENV) or MEMORY_LIMIT
    try:
        con.execute(f"SET memory_limit = {quote(limit)}")
    except duckdb.Error as exc:
        con.close()
        raise ValueError(f"Memory limit {limit!r} (from ${MEMORY_ENV} or the caller) is not a size; "
                         "give one like 512MB or 2GB.") from exc
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if spill_dir is not None:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
    spill = tempfile.mkdtemp(prefix="healthfusion-duckdb-", dir=spill_dir)  # one per connection: no clashes
    con.execute(f"SET temp_directory = {quote(spill)}")
    _SPILL[id(con)] = spill
    con.execute(f"SET threads = {int(threads or 1)}")
    con.execute("SET enable_progress_bar = false")  # progress is logged by run(), not drawn on the terminal
    con.execute("SET preserve_insertion_order = false")  # lets scans stream without holding rows in order
    return con


def scan(con: duckdb.DuckDBPyConnection, path: Path, columns: dict[str, str],
         keep: tuple[str, pa.Array] | None = None, progress: str | None = None,
         row_groups: range | None = None) -> Stream:
    """Table file ``path`` (CSV, CSV.gz or Parquet) restricted to ``columns`` (name -> ``"int"``, ``"float"``,
    ``"str"`` or ``"time"``), each of that kind, as a :class:`Stream` whose ``sql`` names it in queries on
    ``con``.

    The file is decoded by pyarrow's streaming reader (:func:`~healthfusion.data.sources.io.stream_table`:
    explicit types, nothing guessed, a value that does not parse named by column and line) and handed to DuckDB
    as a stream of Arrow batches. With ``keep=(column, values)`` only rows whose ``column`` is one of
    ``values`` reach DuckDB; the others are counted in :attr:`Stream.skipped` (MIMIC-IV chartevents: 80 % of
    the rows are items no variable uses). On 2M gzipped chartevents rows DuckDB's own CSV reader took 3.0 CPU
    seconds for a query this way took 2.6 (docs/data-sources.md, "Choosing the table engine").
    With ``progress`` (a label), the rows decoded so far are logged every :data:`PROGRESS_SECONDS`. With
    ``row_groups`` (Parquet only) only those row groups are read.

    Raises
    ------
    SourceError
        If the file is empty or lacks a requested column (naming the columns it has); errors met while the
        file is decoded are raised by :func:`run`.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        _check_columns(path, _parquet_names(path), columns)
    else:
        _check_columns(path, _csv_header(path, list(columns)), columns)
    stream = Stream(path, columns, keep, progress, row_groups)
    stream.sql = f"stream_{len(_STREAMS.setdefault(id(con), []))}"
    _STREAMS[id(con)].append(stream)
    schema = pa.schema([(c, _ARROW[k]) for c, k in columns.items()])
    con.register(stream.sql, pa.RecordBatchReader.from_batches(schema, stream.batches()))
    return stream


class Stream:
    """Batches of a table file from :func:`stream_table`, for DuckDB. ``read``: rows decoded; ``skipped``:
    rows the ``keep`` filter removed; an error met while decoding is kept, so that :func:`run` raises it as it
    was (DuckDB would wrap it)."""

    def __init__(self, path: Path, columns: dict[str, str], keep: tuple[str, pa.Array] | None = None,
                 progress: str | None = None, row_groups: range | None = None):
        self.path, self.columns, self.keep, self.progress = path, columns, keep, progress
        self.row_groups = row_groups
        self.sql, self.read, self.skipped, self.error = "", 0, 0, None

    def batches(self):
        last = time.perf_counter()
        try:
            for t in stream_table(self.path, self.columns, self.row_groups):
                n = t.num_rows
                self.read += n
                if self.progress and time.perf_counter() - last >= PROGRESS_SECONDS:
                    log.info("%s: %d rows read", self.progress, self.read)
                    last = time.perf_counter()
                if self.keep is not None:
                    column, values = self.keep
                    t = t.filter(pc.fill_null(pc.is_in(t[column], value_set=values), False))
                    self.skipped += n - t.num_rows
                yield from t.select(list(self.columns)).to_batches()
        except BaseException as exc:
            self.error = exc
            raise


_STREAMS: dict[int, list[Stream]] = {}  # connection id -> its streams (errors are looked up there)
_SPILL: dict[int, str] = {}  # connection id -> its spill folder


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
    except duckdb.Error as exc:
        decoded = next((s.error for s in _STREAMS.get(id(con), []) if s.error is not None), None)
        if decoded is not None:
            raise decoded from None
        return _translate(con, exc, path, columns)


def _translate(con, exc: Exception, path: Path, columns: dict[str, str]):
    """DuckDB's error ``exc`` as a :class:`SourceError` (or :class:`MemoryError`) naming the file."""
    path, message = Path(path), _first_line(exc)
    if isinstance(exc, duckdb.ConversionException) and path.suffix != ".parquet":
        raise _locate_bad_value(path, columns, exc) from exc
    if isinstance(exc, duckdb.OutOfMemoryException):
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        raise MemoryError(f"Reading {path} needed more memory than the table engine's limit ({limit}) and could "
                          f"not spill enough to disk; set {MEMORY_ENV} higher (e.g. 2GB) or free disk space in "
                          "the temporary folder.") from exc
    if isinstance(exc, duckdb.IOException):
        raise _unreadable(path, exc) from exc
    if isinstance(exc, duckdb.InvalidInputException):
        if path.suffix != ".parquet" and "CSV" in message.upper():
            raise SourceError(f"File {path} could not be parsed as CSV: {message}.") from exc
        raise SourceError(f"File {path} could not be read ({message}); is it a complete, uncorrupted file?") \
            from exc
    raise exc


def close(con: duckdb.DuckDBPyConnection) -> None:
    """Close a connection of :func:`connect`, forget the streams :func:`scan` registered on it and remove its
    spill folder."""
    _STREAMS.pop(id(con), None)
    con.close()
    spill = _SPILL.pop(id(con), None)
    if spill is not None:
        shutil.rmtree(spill, ignore_errors=True)


def _parquet_names(path: Path) -> list[str]:
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
