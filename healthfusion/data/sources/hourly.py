"""Hourly means of an event stream too large for memory, computed by the table engine (DuckDB,
:mod:`~healthfusion.data.sources.engine`): what is kept is one entry per (stay, hour, variable) that has an
observation, never one per raw row.

:func:`iter_hourly` reads an itemid-coded event table (MIMIC-IV ``chartevents``: 330 million rows) in one
streaming query and yields one event per stay, hour and variable: the mean of that hour's values, dated at the
mean time of its observations. Hours are counted from the prediction time (``[p - 1, p)``, ``[p, p + 1)``, ...
for prediction time ``p``), so no hour straddles it and a mean never mixes values from before and after it:
the leakage guard :meth:`~healthfusion.data.cohort.Cohort.observable` hides exactly the hours after ``p``
(an hour whose only values fall at ``p`` itself is visible, as those values are).

The query gives every row one outcome (used, or the first reason it is dropped) and groups rows by outcome,
stay, hour and variable, so the row accounting and the sums come from the same pass over the file. DuckDB keeps
its memory under :data:`~healthfusion.data.sources.engine.MEMORY_LIMIT` by spilling the aggregation and the
final sort by stay to disk; the sorted means are then fetched in chunks of :data:`CHUNK_BINS` hourly means cut
at stay boundaries, so they can be written out chunk by chunk.

A build split across workers by Parquet row groups runs the same query in two steps: each worker's
:func:`hourly_sums` groups the rows of its row groups (counts, sums of values and of offsets within the hour,
for every outcome), and :func:`combine_hourly` adds the workers' groups up and takes the means, sorted and
chunked as above. Counts and sums add up across any split of the rows, so a stay whose rows span row groups
gets the same means (up to the order of float additions) and every row is counted once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.plausibility import PLAUSIBLE_RANGES
from healthfusion.data.sources import engine

log = logging.getLogger(__name__)

CHUNK_BINS = 1 << 17  # hourly means fetched (and yielded) at a time, cut at the last whole stay (1 << 20: +140 MB)
_LAST_OFFSET = 1 - 2.0**-20  # mean offsets stay below 1, so hour + offset is inside the hour
# the outcome of a row, in the order the reasons are checked (0: used in an hourly mean)
REASONS = ("unmapped item", "stay not in cohort", "missing time", "missing value", "implausible value",
           "outside stay window")


def iter_hourly(
    path: Path, table: str, columns: tuple[str, str, str, str], items: pd.DataFrame, windows: pd.DataFrame,
    prediction_hours: float, acc: RowAccounting, derived: dict[str, tuple[str, ...]] | None = None,
    progress: bool = False, memory_limit: str | None = None, spill_dir: Path | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream an itemid-coded event table into hourly means per stay and variable, counting every row; yield the
    events in chunks of consecutive stays, in bounded memory.

    Parameters
    ----------
    path, table : Path, str
        The file (CSV, CSV.gz or Parquet) and its name in the row accounting.
    columns : (key, itemid, time, value)
        Column names: the stay key (int), the item id (int), the ISO timestamp and the numeric value.
    items : DataFrame
        Indexed by itemid (unique); columns ``variable``, ``factor``, ``offset`` (canonical = value * factor +
        offset).
    windows : DataFrame
        One row per stay: ``stay_key`` (int, unique, matched against the key column), ``stay_id`` (str),
        ``intime`` (datetime) and ``start``, ``end`` (hours since ``intime``; rows outside are dropped).
    prediction_hours : float
        Hours since ``intime`` at which hours are aligned (see the module docstring).
    derived : dict, optional
        ``{"GCS": ("GCSEye", "GCSVerbal", "GCSMotor")}``: a variable that is the sum of the hourly means of its
        components, in every hour where all of them have a value; dated at the latest component time.
    progress : bool, default False
        Log the rows read while the file is streamed.
    memory_limit, spill_dir : optional
        Passed to :func:`~healthfusion.data.sources.engine.connect`: the engine's memory limit and where it
        spills.

    Yields
    ------
    DataFrame
        Events with columns ``stay_id``, ``time`` (hours since ``intime``), ``variable``, ``value``; the
        categories of ``stay_id`` are all of ``windows["stay_id"]`` and those of ``variable`` are the same in
        every chunk. The whole table is read (and every row counted) before the first chunk is yielded.

    Raises
    ------
    SourceError
        If the file is empty, lacks a column, or a value cannot be parsed (naming file, column and line).

    Row accounting: ``unmapped item``, ``stay not in cohort``, ``missing time``, ``missing value``,
    ``implausible value`` (outside :data:`~healthfusion.data.plausibility.PLAUSIBLE_RANGES` after unit
    conversion), ``outside stay window`` (the first that applies); every other row is used in exactly one
    hourly mean.
    """
    query = _Query(columns, items, windows, prediction_hours, derived)
    con = engine.connect(memory_limit=memory_limit, spill_dir=spill_dir)
    try:
        source = query.scan(con, path, progress=table if progress else None)
        engine.run(con, query.sql(source.sql, ordered=True), path, query.kinds)
        acc.read(table, source.skipped)
        acc.drop(table, "unmapped item", source.skipped)
        yield from query.events(con, acc, table)
    finally:
        engine.close(con)
    if progress:
        log.info("%s: %d rows read, %d used", table, acc.tables[table].read, acc.tables[table].used)


def hourly_sums(
    path: Path, columns: tuple[str, str, str, str], items: pd.DataFrame, windows: pd.DataFrame,
    prediction_hours: float, derived: dict[str, tuple[str, ...]] | None = None, row_groups: range | None = None,
    memory_limit: str | None = None, spill_dir: Path | None = None,
) -> pa.Table:
    """One worker's share of :func:`iter_hourly` on a Parquet file split by row groups: the per-(outcome, stay,
    hour, variable) row counts and sums of the rows of ``row_groups`` (default: all), for
    :func:`combine_hourly` to add up with the other workers'.

    Sums and counts add up across any split of the rows, so a stay whose rows span row groups read by different
    workers gets the same hourly means as from one read. Parameters are those of :func:`iter_hourly`;
    ``windows`` must be all the stays (the same for every worker: ``stay`` is a row of it).

    Returns
    -------
    pyarrow.Table
        Columns ``outcome`` (0 used, else 1 + the index of the reason in :data:`REASONS`), ``stay``, ``hour``,
        ``variable`` (null unless used), ``n`` (rows), ``vsum`` and ``osum`` (sums of the values and of the
        offsets in the hour); rows of unmapped items skipped while reading are one row of outcome 1.
    """
    query = _Query(columns, items, windows, prediction_hours, derived)
    con = engine.connect(memory_limit=memory_limit, spill_dir=spill_dir)
    try:
        source = query.scan(con, path, row_groups=row_groups)
        engine.run(con, f"CREATE TEMP TABLE sums AS {query.sql(source.sql, ordered=False)}", path, query.kinds)
        sums = con.sql("SELECT * FROM sums").to_arrow_table()
        skipped = pa.table({"outcome": [1], "stay": [None], "hour": [None], "variable": [None],
                            "n": [source.skipped], "vsum": [None], "osum": [None]}, schema=SUMS)
        return pa.concat_tables([sums.select(SUMS.names).cast(SUMS), skipped])
    finally:
        engine.close(con)


def combine_hourly(
    parts: list[pa.Table], table: str, columns: tuple[str, str, str, str], items: pd.DataFrame,
    windows: pd.DataFrame, prediction_hours: float, acc: RowAccounting,
    derived: dict[str, tuple[str, ...]] | None = None, memory_limit: str | None = None, spill_dir: Path | None = None,
) -> Iterator[pd.DataFrame]:
    """The events of :func:`iter_hourly` from the :func:`hourly_sums` of disjoint parts of the table (row groups
    read by different workers), counting every row of the parts once in ``acc`` by outcome; yielded in chunks
    of consecutive stays as :func:`iter_hourly` does. The other parameters are those the parts were made with."""
    query = _Query(columns, items, windows, prediction_hours, derived)
    con = engine.connect(memory_limit=memory_limit, spill_dir=spill_dir)
    try:
        con.register("parts", pa.concat_tables([p.cast(SUMS) for p in parts]) if parts else SUMS.empty_table())
        con.execute("SELECT outcome, stay, hour, variable, CAST(sum(n) AS BIGINT) AS n, sum(vsum) AS vsum, "
                    "sum(osum) AS osum FROM parts GROUP BY ALL ORDER BY stay NULLS FIRST, hour, variable")
        yield from query.events(con, acc, table)
    finally:
        engine.close(con)


SUMS = pa.schema([("outcome", pa.int32()), ("stay", pa.int32()), ("hour", pa.int32()), ("variable", pa.int32()),
                  ("n", pa.int64()), ("vsum", pa.float64()), ("osum", pa.float64())])


class _Query:
    """The hourly query of one event table: its lookup tables (items, stays) and SQL, and the events made
    from its sorted result."""

    def __init__(self, columns: tuple[str, str, str, str], items: pd.DataFrame, windows: pd.DataFrame,
                 prediction_hours: float, derived: dict[str, tuple[str, ...]] | None):
        self.columns = columns
        self.derived = {name: parts for name, parts in (derived or {}).items()
                        if set(parts) <= set(items["variable"])}
        self.variables = variables = pd.Index(sorted(set(items["variable"]) | set(self.derived)))
        if not items.index.is_unique or not windows["stay_key"].is_unique:
            raise ValueError("The hourly query needs one items row per itemid and one windows row per stay_key.")
        ranges = [PLAUSIBLE_RANGES.get(v, (-np.inf, np.inf, "")) for v in variables]
        var = variables.get_indexer(items["variable"])
        self.item_table = pa.table({
            "itemid": items.index.to_numpy(dtype=np.int64), "var": var.astype(np.int32),
            "factor": items["factor"].to_numpy(dtype=float), "shift": items["offset"].to_numpy(dtype=float),
            "low": np.array([ranges[v][0] for v in var], dtype=float),
            "high": np.array([ranges[v][1] for v in var], dtype=float),
        })
        self.stay_table = pa.table({
            "stay_key": windows["stay_key"].to_numpy(dtype=np.int64),
            "stay": np.arange(len(windows), dtype=np.int32),
            "intime": windows["intime"].to_numpy().astype("datetime64[us]").astype(np.int64),
            "start": windows["start"].to_numpy(dtype=float), "stop": windows["end"].to_numpy(dtype=float),
        })
        self.stay_ids = pd.Index(windows["stay_id"])
        self.pred = float(prediction_hours)
        key_col, item_col, time_col, value_col = columns
        self.kinds = {key_col: "int", item_col: "int", time_col: "time", value_col: "float"}

    def scan(self, con, path: Path, progress: str | None = None, row_groups: range | None = None):
        """Register the lookup tables and the file's rows of mapped items, typed, on ``con`` (the other rows
        are counted as they stream past)."""
        con.register("item_table", self.item_table)
        con.register("stay_table", self.stay_table)
        # the small lookup tables are the hash joins' build sides, whatever DuckDB estimates for a stream
        con.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
        return engine.scan(con, path, self.kinds, keep=(self.columns[1], pa.array(self.item_table["itemid"])),
                           progress=progress, row_groups=row_groups)

    def sql(self, source: str, ordered: bool) -> str:
        """The query over ``source``: every row's outcome, grouped by outcome, stay, hour and variable (sorted
        by stay when ``ordered``)."""
        k, it, tm, vl = (engine.ident(c) for c in self.columns)
        outcome = " ".join(f"WHEN {test} THEN {i + 1}" for i, test in enumerate((
            "var IS NULL", "stay IS NULL", "hours IS NULL", "value IS NULL OR isnan(value)",
            "NOT (value >= low AND value <= high)", "NOT (hours >= start AND hours <= stop)")))
        return f"""
            WITH rows AS (
                SELECT i.var, w.stay, s.{vl} * i.factor + i.shift AS value,
                       (epoch_us(s.{tm}) - w.intime) / 3600000000.0 AS hours, i.low, i.high, w.start, w.stop
                FROM {source} AS s
                LEFT JOIN item_table AS i ON s.{it} = i.itemid
                LEFT JOIN stay_table AS w ON s.{k} = w.stay_key
            ), outcomes AS (
                SELECT CASE {outcome} ELSE 0 END AS outcome, stay, var, value, hours - {self.pred!r} AS rel FROM rows
            ), cells AS (
                SELECT outcome, CASE WHEN outcome = 0 THEN stay END AS stay,
                       CASE WHEN outcome = 0 THEN CAST(floor(rel) AS INTEGER) END AS hour,
                       CASE WHEN outcome = 0 THEN var END AS variable,
                       CASE WHEN outcome = 0 THEN value END AS value,
                       CASE WHEN outcome = 0 THEN rel - floor(rel) END AS frac
                FROM outcomes
            )
            SELECT outcome, stay, hour, variable, count(*) AS n, sum(value) AS vsum, sum(frac) AS osum
            FROM cells GROUP BY ALL {"ORDER BY stay NULLS FIRST, hour, variable" if ordered else ""}
        """

    def events(self, con, acc: RowAccounting, table: str) -> Iterator[pd.DataFrame]:
        """Events from the pending result on ``con`` (groups sorted by stay, hour, variable), in chunks cut at
        stay boundaries; every group's rows counted in ``acc``."""
        carry = None
        for means in _fetch(con, acc, table):
            if carry is not None:
                means = {name: np.concatenate([carry[name], means[name]]) for name in means}
            last = means["stay"][-1]  # the last stay may go on in the next chunk
            cut = int(np.searchsorted(means["stay"], last))
            carry = {name: a[cut:] for name, a in means.items()}
            if cut:
                yield _events({name: a[:cut] for name, a in means.items()}, self.variables, self.stay_ids,
                              self.pred, self.derived)
        if carry is not None:
            yield _events(carry, self.variables, self.stay_ids, self.pred, self.derived)


def _fetch(con, acc: RowAccounting, table: str) -> Iterator[dict[str, np.ndarray]]:
    """The pending result of the hourly query, :data:`CHUNK_BINS` groups at a time: each group's rows are
    counted in ``acc`` by outcome, and the hourly means of the used ones (``stay``, ``hour``, ``variable``,
    ``value``, ``offset``; sorted by stay, hour, variable) are yielded when there are any."""
    vectors = max(1, -(-CHUNK_BINS // 2048))  # DuckDB hands rows over in vectors of 2,048
    while True:
        part = con.fetch_df_chunk(vectors)
        if part.empty:
            return
        for lo in range(0, len(part), CHUNK_BINS):
            groups = part.iloc[lo:lo + CHUNK_BINS]
            outcome, n = groups["outcome"].to_numpy(), groups["n"].to_numpy(dtype=np.int64)
            acc.read(table, int(n.sum()))
            for i, reason in enumerate(REASONS, start=1):
                acc.drop(table, reason, int(n[outcome == i].sum()))
            used = outcome == 0
            acc.use(table, int(n[used].sum()))
            if not used.any():
                continue
            count = n[used].astype(np.float64)
            groups = groups[used]
            yield {"stay": groups["stay"].to_numpy(dtype=np.int32), "hour": groups["hour"].to_numpy(dtype=np.int32),
                   "variable": groups["variable"].to_numpy(dtype=np.int32),
                   "value": groups["vsum"].to_numpy(dtype=np.float64) / count,
                   "offset": np.minimum(groups["osum"].to_numpy(dtype=np.float64) / count, _LAST_OFFSET)}


def _events(means: dict[str, np.ndarray], variables: pd.Index, stay_ids: pd.Index, pred: float,
            derived: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """Events (stay_id and variable categorical) from a chunk of hourly means (see :func:`_fetch`), plus the
    derived variables; the arrays of ``means`` are released as the columns are built."""
    extra = {k: [] for k in ("stay", "hour", "variable", "value", "offset")}
    for name, components in derived.items():
        comp = np.flatnonzero(np.isin(means["variable"], variables.get_indexer(list(components))))
        if len(comp) == 0:
            continue
        span = int(means["hour"].max()) + 1 - int(means["hour"].min())
        cell = means["stay"][comp].astype(np.int64) * span + means["hour"][comp]
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])  # rows are sorted by stay, hour
        full = np.diff(np.r_[starts, len(comp)]) == len(components)
        first = comp[starts[full]]
        extra["stay"].append(means["stay"][first])
        extra["hour"].append(means["hour"][first])
        extra["variable"].append(np.full(len(first), variables.get_loc(name), dtype=np.int32))
        extra["value"].append(np.add.reduceat(means["value"][comp], starts)[full])
        extra["offset"].append(np.maximum.reduceat(means["offset"][comp], starts)[full])

    def column(name):
        return np.concatenate([means.pop(name), *extra[name]])

    time = pred + column("hour") + column("offset").astype(np.float64)
    return pd.DataFrame({
        "stay_id": pd.Categorical.from_codes(column("stay"), categories=stay_ids),
        "time": time,
        "variable": pd.Categorical.from_codes(column("variable"), categories=variables),
        "value": column("value"),
    }, copy=False)
