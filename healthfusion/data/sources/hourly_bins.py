"""The previous implementation of :func:`iter_hourly` (pyarrow blocks reduced in numpy), kept only until the
engine-based one in :mod:`~healthfusion.data.sources.hourly` is shown to give the same cohorts.

Hourly means of an event stream too large for memory: the state kept is one entry per (stay, hour,
variable) that has an observation, never one per raw row.

:func:`iter_hourly` reads an itemid-coded event table (MIMIC-IV ``chartevents``: 330 million rows) block by
block and yields one event per stay, hour and variable: the mean of that hour's values, dated at the mean
time of its observations. Hours are counted from the prediction time (``[p - 1, p)``, ``[p, p + 1)``, ...
for prediction time ``p``), so no hour straddles it and a mean never mixes values from before and after it:
the leakage guard :meth:`~healthfusion.data.cohort.Cohort.observable` hides exactly the hours after ``p``
(an hour whose only values fall at ``p`` itself is visible, as those values are).

:class:`HourlyBins` holds the state: blocks of events are added as they are streamed (:meth:`HourlyBins.add`);
each block is reduced to sums and counts at once, and the reduced blocks are merged into the running state by
key. The state is split into shards of consecutive stays, and a shard is merged once its pending blocks reach
a quarter of its size, so merging needs extra memory for one shard only and the total work stays close to
linear. Once the state held in memory passes ``memory_rows`` bins, every shard's state is appended to its own
spill file on disk and memory starts again from empty: the memory used stays flat however large the table.
:meth:`HourlyBins.chunks` then finishes the shards one at a time (spill file + what is still in memory), so
results are produced, and can be written out, shard by shard, as :func:`iter_hourly` yields them.

Example::

    bins = HourlyBins(n_stays=2, n_variables=3, first_hour=-24, last_hour=72)
    bins.add(stay=np.array([0, 0]), hour=np.array([5, 5]), variable=np.array([1, 1]),
             value=np.array([80.0, 90.0]), offset=np.array([0.25, 0.75]))
    bins.result()["value"]   # array([85.])
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.plausibility import PLAUSIBLE_RANGES
from healthfusion.data.sources.io import stream_table

log = logging.getLogger(__name__)

SHARD_STAYS = 512  # stays per shard of the state
MIN_PENDING = 1 << 16  # a shard is merged once this many reduced rows wait, or a quarter of its size
MEMORY_ROWS = 1_000_000  # bins held in memory before the state is spilled to disk (24 bytes each)
_RECORD = np.dtype([("key", np.int64), ("vsum", np.float64), ("osum", np.float32), ("count", np.uint32)])
_LAST_OFFSET = 1 - 2.0**-20  # mean offsets stay below 1, so hour + offset is inside the hour (float32 sums)


class HourlyBins:
    """Running per-(stay, hour, variable) sums of values and of times within the hour.

    Parameters
    ----------
    n_stays, n_variables : int
        Stays and variables are given to :meth:`add` as indices ``0 .. n - 1``.
    first_hour, last_hour : int
        Range of hour indices (inclusive); an hour may be negative (before admission).
    memory_rows : int
        Bins kept in memory before the state is spilled to disk (default :data:`MEMORY_ROWS`, about 24 MB).
    spill_dir : Path, optional
        Where spill files go (a temporary folder, removed when :meth:`chunks` ends, when None).

    Raises
    ------
    ValueError
        If a size is not positive, ``last_hour < first_hour``, or the key space exceeds int64.
    """

    def __init__(self, n_stays: int, n_variables: int, first_hour: int, last_hour: int,
                 memory_rows: int | None = None, spill_dir: Path | None = None):
        if n_stays < 1 or n_variables < 1 or last_hour < first_hour:
            raise ValueError(f"Need n_stays >= 1, n_variables >= 1 and first_hour <= last_hour; got {n_stays}, "
                             f"{n_variables}, {first_hour}, {last_hour}.")
        self.n_stays, self.n_variables = int(n_stays), int(n_variables)
        self.first_hour, self.n_hours = int(first_hour), int(last_hour) - int(first_hour) + 1
        if self.n_stays * self.n_hours * self.n_variables >= 2**62:
            raise ValueError(f"{n_stays} stays x {self.n_hours} hours x {n_variables} variables do not fit "
                             "an int64 key; split the stays.")
        per_shard = SHARD_STAYS * self.n_hours * self.n_variables
        n_shards = -(-self.n_stays // SHARD_STAYS)
        self._bounds = np.arange(1, n_shards, dtype=np.int64) * per_shard  # first key of shards 1 ..
        self._state: list[tuple[np.ndarray, ...]] = [_empty() for _ in range(n_shards)]
        self._pending: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(n_shards)]
        self._waiting = np.zeros(n_shards, dtype=np.int64)
        self.n_added = 0
        self.memory_rows = int(MEMORY_ROWS if memory_rows is None else memory_rows)
        self._spill_root = None if spill_dir is None else Path(spill_dir)
        self._spill_dir: Path | None = None  # created at the first spill
        self._spilled = np.zeros(n_shards, dtype=np.int64)  # bins written to each shard's spill file
        self.n_spills = 0

    def add(self, stay: np.ndarray, hour: np.ndarray, variable: np.ndarray, value: np.ndarray,
            offset: np.ndarray) -> None:
        """Add events: ``stay``, ``hour`` and ``variable`` indices, ``value`` and ``offset`` (time within the
        hour, in [0, 1)), all 1-D of one length."""
        if len(stay) == 0:
            return
        key = (np.asarray(stay, dtype=np.int64) * self.n_hours
               + (np.asarray(hour, dtype=np.int64) - self.first_hour)) * self.n_variables + variable
        block = _reduce(key, np.asarray(value, dtype=np.float64), np.asarray(offset, dtype=np.float32),
                        np.ones(len(key), dtype=np.uint32))
        self.n_added += len(key)
        cuts = np.searchsorted(block[0], self._bounds)
        for shard, (lo, hi) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, len(block[0])], strict=True)):
            if hi > lo:
                self._pending[shard].append(tuple(a[lo:hi] for a in block))
                self._waiting[shard] += hi - lo
                if self._waiting[shard] >= max(MIN_PENDING, len(self._state[shard][0]) // 4):
                    self._merge(shard)
        if self.n_bins > self.memory_rows:
            self._spill()

    def _merge(self, shard: int) -> None:
        parts = [self._state[shard], *self._pending[shard]]
        self._pending[shard] = []
        self._waiting[shard] = 0
        self._state[shard] = _reduce(*(np.concatenate([p[i] for p in parts]) for i in range(4)))

    @property
    def n_bins(self) -> int:
        """Bins held in memory (pending blocks not merged yet count once per block; spilled bins do not count)."""
        return int(sum(len(s[0]) for s in self._state) + self._waiting.sum())

    def _spill(self) -> None:
        """Append every shard's state to its spill file and empty the memory."""
        if self._spill_dir is None:
            if self._spill_root is not None:
                self._spill_root.mkdir(parents=True, exist_ok=True)
            self._spill_dir = Path(tempfile.mkdtemp(prefix="hourly-", dir=self._spill_root))
        for shard in range(len(self._state)):
            if self._pending[shard]:
                self._merge(shard)
            key, vsum, osum, count = self._state[shard]
            if len(key) == 0:
                continue
            records = np.empty(len(key), _RECORD)
            records["key"], records["vsum"], records["osum"], records["count"] = key, vsum, osum, count
            with open(self._spill_dir / f"shard-{shard:06d}.bin", "ab") as fh:
                records.tofile(fh)
            self._spilled[shard] += len(key)
            self._state[shard] = _empty()
        self.n_spills += 1
        log.debug("hourly state spilled to %s (%d bins on disk)", self._spill_dir, int(self._spilled.sum()))

    def _finish(self, shard: int) -> tuple[np.ndarray, ...]:
        """The shard's final sums (spill file + memory); its memory and spill file are released."""
        parts = [self._state[shard], *self._pending[shard]]
        self._state[shard], self._pending[shard], self._waiting[shard] = _empty(), [], 0
        if self._spilled[shard]:
            path = self._spill_dir / f"shard-{shard:06d}.bin"
            records = np.fromfile(path, dtype=_RECORD)
            path.unlink()
            self._spilled[shard] = 0
            parts.append((records["key"], records["vsum"], records["osum"], records["count"]))
        if len(parts) == 1:
            return parts[0]
        return _reduce(*(np.concatenate([p[i] for p in parts]) for i in range(4)))

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """The hourly means shard by shard (consecutive stays), each as :meth:`result` describes; a shard's
        memory and spill file are released as it is yielded, and the spill folder when the last one is."""
        try:
            for shard in range(len(self._state)):
                sums = self._finish(shard)
                if len(sums[0]):
                    yield self._means(*sums)
        finally:
            if self._spill_dir is not None:
                shutil.rmtree(self._spill_dir, ignore_errors=True)
                self._spill_dir = None

    def _means(self, key, vsum, osum, count) -> dict[str, np.ndarray]:
        rest, variable = np.divmod(key, self.n_variables)
        stay, hour = np.divmod(rest, self.n_hours)
        return {"stay": stay.astype(np.int32), "hour": (hour + self.first_hour).astype(np.int32),
                "variable": variable.astype(np.int32), "value": vsum / count,
                "offset": np.minimum(osum / count, _LAST_OFFSET).astype(np.float32), "count": count.astype(np.uint32)}

    def result(self) -> dict[str, np.ndarray]:
        """The hourly means, sorted by stay, hour, variable: arrays ``stay``, ``hour``, ``variable`` (int32),
        ``value`` (mean, float64), ``offset`` (mean time within the hour, float32 in [0, 1)) and ``count``
        (uint32), all in memory at once (:meth:`chunks` gives them shard by shard)."""
        parts = list(self.chunks()) or [self._means(*_empty())]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _empty() -> tuple[np.ndarray, ...]:
    return (np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float32), np.empty(0, np.uint32))


def _reduce(key, vsum, osum, count) -> tuple[np.ndarray, ...]:
    """Sum rows of equal key; returns the unique keys (sorted) and their sums."""
    order = np.argsort(key, kind="stable")  # timsort: fast on the concatenated sorted runs of a merge
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return (key[starts], np.add.reduceat(vsum[order], starts), np.add.reduceat(osum[order], starts),
            np.add.reduceat(count[order], starts))


def iter_hourly(
    path: Path, table: str, columns: tuple[str, str, str, str], items: pd.DataFrame, windows: pd.DataFrame,
    prediction_hours: float, acc: RowAccounting, derived: dict[str, tuple[str, ...]] | None = None,
    progress: bool = False, memory_rows: int | None = None, spill_dir: Path | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream an itemid-coded event table into hourly means per stay and variable, counting every row; yield the
    events in chunks of consecutive stays, in bounded memory (see :class:`HourlyBins`).

    Parameters
    ----------
    path, table : Path, str
        The file (CSV, CSV.gz or Parquet) and its name in the row accounting.
    columns : (key, itemid, time, value)
        Column names: the stay key (int), the item id (int), the ISO timestamp and the numeric value.
    items : DataFrame
        Indexed by itemid; columns ``variable``, ``factor``, ``offset`` (canonical = value * factor + offset).
    windows : DataFrame
        One row per stay: ``stay_key`` (int, matched against the key column), ``stay_id`` (str), ``intime``
        (datetime) and ``start``, ``end`` (hours since ``intime``; rows outside are dropped).
    prediction_hours : float
        Hours since ``intime`` at which hours are aligned (see the module docstring).
    derived : dict, optional
        ``{"GCS": ("GCSEye", "GCSVerbal", "GCSMotor")}``: a variable that is the sum of the hourly means of its
        components, in every hour where all of them have a value; dated at the latest component time.

    memory_rows, spill_dir : optional
        Passed to :class:`HourlyBins`: bins held in memory before spilling, and where spill files go.

    Yields
    ------
    DataFrame
        Events with columns ``stay_id``, ``time`` (hours since ``intime``), ``variable``, ``value``; the
        categories of ``stay_id`` are all of ``windows["stay_id"]`` and those of ``variable`` are the same in
        every chunk. The whole table is read (and every row counted) before the first chunk is yielded.

    Row accounting: ``unmapped item``, ``stay not in cohort``, ``missing time``, ``missing value``,
    ``implausible value`` (outside :data:`~healthfusion.data.plausibility.PLAUSIBLE_RANGES` after unit
    conversion), ``outside stay window``; every other row is used in exactly one hourly mean.
    """
    key_col, item_col, time_col, value_col = columns
    derived = {name: parts for name, parts in (derived or {}).items() if set(parts) <= set(items["variable"])}
    variables = pd.Index(sorted(set(items["variable"]) | set(derived)))
    item_set = pa.array(items.index.to_numpy(dtype=np.int64))
    item_var = variables.get_indexer(items["variable"])
    factor = items["factor"].to_numpy(dtype=float)
    shift = items["offset"].to_numpy(dtype=float)
    ranges = [PLAUSIBLE_RANGES.get(v, (-np.inf, np.inf, "")) for v in variables]
    low, high = np.array([r[0] for r in ranges], dtype=float), np.array([r[1] for r in ranges], dtype=float)
    key_set = pa.array(windows["stay_key"].to_numpy(dtype=np.int64))
    intime = windows["intime"].to_numpy().astype("datetime64[us]").astype(np.int64)
    start, end = windows["start"].to_numpy(dtype=float), windows["end"].to_numpy(dtype=float)
    pred = float(prediction_hours)
    bins = HourlyBins(len(windows), len(variables), int(np.floor(start.min() - pred)),
                      int(np.floor(end.max() - pred)), memory_rows=memory_rows, spill_dir=spill_dir)
    kinds = {key_col: "int", item_col: "int", time_col: "time", value_col: "float"}
    for i, t in enumerate(stream_table(path, kinds)):
        acc.read(table, t.num_rows)
        if progress and i % 200 == 0:
            log.info("%s: %d rows read, %d hourly means", table, acc.tables[table].read, bins.n_bins)
        rows = np.flatnonzero(pc.is_in(t[item_col], value_set=item_set).to_numpy(zero_copy_only=False))
        acc.drop(table, "unmapped item", t.num_rows - len(rows))  # most rows: nothing else is done with them
        t = t.take(rows)
        stay = pc.fill_null(pc.index_in(t[key_col], value_set=key_set), -1).to_numpy()
        kept = np.flatnonzero(stay >= 0)
        acc.drop(table, "stay not in cohort", len(stay) - len(kept))
        t, stay = t.take(kept), stay[kept]
        item = pc.index_in(t[item_col], value_set=item_set).to_numpy()
        when = t[time_col].to_numpy().astype(np.int64)  # NaT -> int64 min
        ok = when != np.iinfo(np.int64).min
        acc.drop(table, "missing time", len(ok) - int(ok.sum()))
        value = t[value_col].to_numpy() * factor[item] + shift[item]  # null -> NaN
        missing = ok & np.isnan(value)
        acc.drop(table, "missing value", int(missing.sum()))
        ok &= ~missing
        var = item_var[item]
        with np.errstate(invalid="ignore"):
            bad = ok & ~((value >= low[var]) & (value <= high[var]))
        acc.drop(table, "implausible value", int(bad.sum()))
        ok &= ~bad
        hours = (when - intime[stay]) / 3.6e9
        outside = ok & ~((hours >= start[stay]) & (hours <= end[stay]))
        acc.drop(table, "outside stay window", int(outside.sum()))
        ok &= ~outside
        acc.use(table, int(ok.sum()))
        rel = hours[ok] - pred
        hour = np.floor(rel)
        bins.add(stay[ok], hour, var[ok], value[ok], rel - hour)
    if bins.n_spills:
        log.info("%s: hourly state spilled to disk %d time(s)", table, bins.n_spills)
    stay_ids = pd.Index(windows["stay_id"])
    for chunk in bins.chunks():
        yield _events(chunk, variables, stay_ids, pred, derived)


def _events(means: dict[str, np.ndarray], variables: pd.Index, stay_ids: pd.Index, pred: float,
            derived: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """Events (stay_id and variable categorical) from a chunk of :meth:`HourlyBins.chunks`, plus the derived variables;
    the arrays of ``means`` are released as the columns are built."""
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
