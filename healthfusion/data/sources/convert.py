"""CSV tables -> Parquet, once, with the table engine (``healthfusion cohort convert``).

Every reader that finds its tables with :func:`~healthfusion.data.sources.io.find_table` prefers the Parquet
copy when both exist; rebuilding a cohort from it is many times faster than from the gzipped CSV files
(figures in docs/data-sources.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from healthfusion.data.errors import SourceError
from healthfusion.data.sources import engine
from healthfusion.data.sources.io import _csv_header
from healthfusion.data.sources.tables import is_code_column, known_kinds
from healthfusion.files import display_path

log = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv.gz", ".csv")
ROW_GROUP_ROWS = 250_000  # rows per Parquet row group


def convert_to_parquet(source: str | Path, out: str | Path, progress: bool = False) -> list[Path]:
    """Convert every CSV table (``.csv``, ``.csv.gz``) under ``source`` to Parquet under ``out``, keeping the
    folder layout (``hosp/labevents.csv.gz`` -> ``hosp/labevents.parquet``).

    Column types: the tables the toolkit knows (MIMIC-IV, eICU; see
    :data:`~healthfusion.data.sources.tables.KNOWN_TABLES`) get their declared types, with identifier and code
    columns (NDC, DRG, ICD codes, ...) as text, so ``00002821501`` stays ``"00002821501"``. Any other column is
    typed from all of its values (integer, number, timestamp, else text; a value with a leading zero keeps the
    column text), except that a column whose name marks an identifier or a code stays text. Empty fields become
    nulls. Files are streamed by DuckDB in bounded memory and written zstd-compressed, next to any already in
    ``out`` (an existing one of the same name is replaced); a file is complete once it has its final name.

    Returns
    -------
    list of Path
        The Parquet files written, in the order of the CSV files' paths.

    Raises
    ------
    SourceError
        If ``source`` is not a folder or holds no CSV table, or a file cannot be read, is empty, has a row with
        the wrong number of fields, or a value that does not fit its declared type (naming the file, and the
        column and line where known).

    Example::

        convert_to_parquet("data/mimic-iv-2.2", "data/mimic-iv-2.2-parquet")
        cohort = mimic4.build("data/mimic-iv-2.2-parquet")
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise SourceError(f"{source} is not a folder; pass the folder that holds the raw CSV tables.")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.name.lower().endswith(CSV_SUFFIXES))
    if not files:
        raise SourceError(f"No CSV table (.csv or .csv.gz) found under {source}.")
    written = []
    con = engine.connect()
    try:
        for file in files:
            name = file.name[: -len(next(s for s in CSV_SUFFIXES if file.name.lower().endswith(s)))]
            target = out / file.parent.relative_to(source) / f"{name}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            rows = _convert(con, file, target, progress)
            log.info("%s: %d rows -> %s", display_path(file), rows, display_path(target))
            written.append(target)
    finally:
        engine.close(con)
    return written


def column_types(path: Path) -> dict[str, str | None]:
    """Each column of CSV ``path`` -> its declared kind (``"int"``, ``"float"``, ``"str"``, ``"time"``), or
    None where it is to be typed from its values."""
    header = _csv_header(path, [])
    if len(set(header)) != len(header):
        raise SourceError(f"File {path} has a repeated column name in its header {header[:20]}; "
                          "give each column its own name.")
    declared = known_kinds(path.name)
    return {c: declared.get(c, declared.get(c.lower(), "str" if is_code_column(c) else None)) for c in header}


def _infer(con, path: Path, kinds: dict[str, str | None]) -> dict[str, str]:
    """Kinds of the undeclared columns of ``path`` from all their values, in one pass over the file read as
    text: ``int`` if every value is an integer without a leading zero, else ``float`` if every value is a
    number (and none looks like a zero-padded code), else ``time`` if every value is a timestamp, else
    ``str`` (also for a column with no value)."""
    todo = [c for c, k in kinds.items() if k is None]
    if not todo:
        return {}
    tests = []
    for c in todo:
        q = engine.ident(c)
        padded = f"bool_or(regexp_matches({q}, '^[+-]?0[0-9]'))"
        tests += [f"count({q}) > 0 AND count({q}) = count(TRY_CAST({q} AS BIGINT)) AND NOT {padded}",
                  f"count({q}) > 0 AND count({q}) = count(TRY_CAST({q} AS DOUBLE)) AND NOT {padded}",
                  f"count({q}) > 0 AND count({q}) = count(TRY_CAST({q} AS TIMESTAMP))"]
    reader = engine.read_csv(path, {c: "VARCHAR" for c in kinds})
    row = engine.run(con, f"SELECT {', '.join(tests)} FROM {reader}", path, {}).fetchone()
    found = {}
    for i, c in enumerate(todo):
        is_int, is_float, is_time = (bool(v) for v in row[3 * i: 3 * i + 3])
        found[c] = "int" if is_int else "float" if is_float else "time" if is_time else "str"
    return found


def _convert(con, path: Path, target: Path, progress: bool) -> int:
    kinds = column_types(path)
    kinds.update(_infer(con, path, kinds))
    reader = engine.read_csv(path, {c: engine.SQL_TYPES[k] for c, k in kinds.items()})
    partial = target.with_name(target.name + ".partial")
    sql = (f"COPY (SELECT * FROM {reader}) TO {engine.quote(str(partial))} "
           f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
    checked = {c: k for c, k in kinds.items() if k != "str"}
    try:
        rows = engine.run(con, sql, path, checked, progress=str(path) if progress else None).fetchone()[0]
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return int(rows)
