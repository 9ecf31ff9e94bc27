"""Hourly means of an event stream too large for memory: the state kept is one entry per (stay, hour,
variable) that has an observation, never one per raw row.

:func:`stream_hourly` reads an itemid-coded event table (MIMIC-IV ``chartevents``: 330 million rows) block by
block and returns one event per stay, hour and variable: the mean of that hour's values, dated at the mean
time of its observations. Hours are counted from the prediction time (``[p - 1, p)``, ``[p, p + 1)``, ...
for prediction time ``p``), so no hour straddles it and a mean never mixes values from before and after it:
the leakage guard :meth:`~healthfusion.data.cohort.Cohort.observable` hides exactly the hours after ``p``
(an hour whose only values fall at ``p`` itself is visible, as those values are).

:class:`HourlyBins` holds the state: blocks of events are added as they are streamed (:meth:`HourlyBins.add`);
each block is reduced to sums and counts at once, and the reduced blocks are merged into the running state by
key. The state is split into shards of consecutive stays, and a shard is merged once its pending blocks reach
a quarter of its size, so merging needs extra memory for one shard only and the total work stays close to
linear.

Example::

    bins = HourlyBins(n_stays=2, n_variables=3, first_hour=-24, last_hour=72)
    bins.add(stay=np.array([0, 0]), hour=np.array([5, 5]), variable=np.array([1, 1]),
             value=np.array([80.0, 90.0]), offset=np.array([0.25, 0.75]))
    bins.result()["value"]   # array([85.])
"""

from __future__ import annotations

import logging
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
_LAST_OFFSET = 1 - 2.0**-20  # mean offsets stay below 1, so hour + offset is inside the hour (float32 sums)


class HourlyBins:
    """Running per-(stay, hour, variable) sums of values and of times within the hour.

    Parameters
    ----------
    n_stays, n_variables : int
        Stays and variables are given to :meth:`add` as indices ``0 .. n - 1``.
    first_hour, last_hour : int
        Range of hour indices (inclusive); an hour may be negative (before admission).

    Raises
    ------
    ValueError
        If a size is not positive, ``last_hour < first_hour``, or the key space exceeds int64.
    """

    def __init__(self, n_stays: int, n_variables: int, first_hour: int, last_hour: int):
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

    def _merge(self, shard: int) -> None:
        parts = [self._state[shard], *self._pending[shard]]
        self._pending[shard] = []
        self._waiting[shard] = 0
        self._state[shard] = _reduce(*(np.concatenate([p[i] for p in parts]) for i in range(4)))

    @property
    def n_bins(self) -> int:
        """Bins held so far (pending blocks not merged yet count once per block)."""
        return int(sum(len(s[0]) for s in self._state) + self._waiting.sum())

    def result(self) -> dict[str, np.ndarray]:
        """The hourly means, sorted by stay, hour, variable: arrays ``stay``, ``hour``, ``variable`` (int32),
        ``value`` (mean, float64), ``offset`` (mean time within the hour, float32 in [0, 1)) and ``count``
        (uint32). The state is released shard by shard as the arrays fill."""
        for shard in range(len(self._state)):
            if self._pending[shard]:
                self._merge(shard)
        n = sum(len(s[0]) for s in self._state)
        out = {"stay": np.empty(n, np.int32), "hour": np.empty(n, np.int32), "variable": np.empty(n, np.int32),
               "value": np.empty(n, np.float64), "offset": np.empty(n, np.float32), "count": np.empty(n, np.uint32)}
        at = 0
        for shard in range(len(self._state)):
            key, vsum, osum, count = self._state[shard]
            self._state[shard] = _empty()
            part = slice(at, at + len(key))
            rest, out["variable"][part] = np.divmod(key, self.n_variables)
            out["stay"][part], hour = np.divmod(rest, self.n_hours)
            out["hour"][part] = hour + self.first_hour
            out["value"][part] = vsum / count
            out["offset"][part] = np.minimum(osum / count, _LAST_OFFSET)
            out["count"][part] = count
            at += len(key)
        return out


def _empty() -> tuple[np.ndarray, ...]:
    return (np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float32), np.empty(0, np.uint32))


def _reduce(key, vsum, osum, count) -> tuple[np.ndarray, ...]:
    """Sum rows of equal key; returns the unique keys (sorted) and their sums."""
    order = np.argsort(key, kind="stable")  # timsort: fast on the concatenated sorted runs of a merge
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return (key[starts], np.add.reduceat(vsum[order], starts), np.add.reduceat(osum[order], starts),
            np.add.reduceat(count[order], starts))


def stream_hourly(
    path: Path, table: str, columns: tuple[str, str, str, str], items: pd.DataFrame, windows: pd.DataFrame,
    prediction_hours: float, acc: RowAccounting, derived: dict[str, tuple[str, ...]] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Stream an itemid-coded event table into hourly means per stay and variable, counting every row.

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

    Returns
    -------
    DataFrame
        Events with columns ``stay_id``, ``time`` (hours since ``intime``), ``variable``, ``value``.

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
                      int(np.floor(end.max() - pred)))
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
    return _events(bins.result(), variables, pd.Index(windows["stay_id"]), pred, derived)


def _events(means: dict[str, np.ndarray], variables: pd.Index, stay_ids: pd.Index, pred: float,
            derived: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """Events (stay_id and variable categorical) from :meth:`HourlyBins.result`, plus the derived variables;
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
