"""The event tables of MIMIC-IV (``hosp/labevents``, ``icu/chartevents``, ``icu/outputevents``) reduced to a
cohort's events: in one process, or split across the workers of a partitioned build.

:func:`event_parts` is the reduction of one process (see :mod:`~healthfusion.data.sources.mimic4` for what is
kept and how every row is counted). A partitioned build (``mimic4.build(..., partitions=...)``, see
:mod:`healthfusion.data.partition`) splits the work one of two ways, chosen by :func:`partitioned_events`:

* **By row groups**, when every event table present is Parquet: each worker reads a disjoint, contiguous range
  of every table's row groups (:func:`~healthfusion.data.partition.split_row_groups`; the driver reads only
  the files' footers) with all the stays (:func:`partition_rows`). Labs and urine outputs are row by row, so
  the workers' events are simply gathered; chartevents come back as per-(stay, hour, variable) counts and sums
  (:func:`~healthfusion.data.sources.hourly.hourly_sums`), which the driver adds up before taking the means
  (:func:`~healthfusion.data.sources.hourly.combine_hourly`), so a stay whose rows span row groups read by
  different workers is reduced as in one read. Every row is read by one worker, and the row accounting is the
  sum of the workers'.
* **By stays** otherwise (CSV and CSV.gz cannot be split without reading them): each worker reduces the events
  of its group of whole patients (:func:`partition_events`) and reads every row of every table; the row
  accounting is merged by :func:`~healthfusion.data.accounting.combine_partitions`.

Both give the same events (in another row order; sums of floats in another order) and the same row accounting
as :func:`event_parts`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from healthfusion.data.accounting import RowAccounting, combine_partitions
from healthfusion.data.partition import Partitions, split_by_patient, split_row_groups
from healthfusion.data.plausibility import drop_implausible
from healthfusion.data.sources.hourly import combine_hourly, hourly_sums, iter_hourly
from healthfusion.data.sources.io import find_table, keep_rows, optional_table, stream_table
from healthfusion.data.sources.itemmap import GCS_COMPONENTS, mimic4_items
from healthfusion.files import display_path

log = logging.getLogger(__name__)

CHART_COLUMNS = ("stay_id", "itemid", "charttime", "valuenum")
DERIVED = {"GCS": GCS_COMPONENTS}
OUTPUT_COLUMNS = {"stay_id": "int", "itemid": "int", "charttime": "time", "value": "float"}


def _lab_columns(lab_time: str) -> dict[str, str]:
    return {"subject_id": "int", "itemid": "int", lab_time: "time", "valuenum": "float"}


def event_files(root: Path) -> dict[str, Path | None]:
    """The event tables' files under the MIMIC-IV ``root`` (labevents required, the others ``None`` if absent)."""
    return {"labevents": find_table(root / "hosp", "labevents"),
            "chartevents": optional_table(root / "icu", "chartevents"),
            "outputevents": optional_table(root / "icu", "outputevents")}


def event_parts(root: Path, windows: pd.DataFrame, prediction_hours: float, lab_time: str, acc: RowAccounting,
                progress: bool) -> Iterator[pd.DataFrame]:
    """Events of the stays in ``windows``, part by part: labs, hourly chartevents chunks, urine output.

    ``windows`` has one row per stay: ``subject_id``, ``stay_key`` (int), ``stay_id`` (str), ``intime``,
    ``start`` and ``end`` (hours since ``intime``). Every row read is counted in ``acc``.
    """
    files = event_files(root)
    yield stream_events(files["labevents"], "labevents", _lab_columns(lab_time), "subject_id", lab_time,
                        "valuenum", mimic4_items("labevents"), windows, acc, progress)
    if files["chartevents"] is not None:
        yield from iter_hourly(files["chartevents"], "chartevents", CHART_COLUMNS, mimic4_items("chartevents"),
                               windows, prediction_hours, acc, derived=DERIVED, progress=progress)
    if files["outputevents"] is not None:
        yield stream_events(files["outputevents"], "outputevents", OUTPUT_COLUMNS, "stay_id", "charttime", "value",
                            mimic4_items("outputevents"), windows, acc, progress)
    for name in ("chartevents", "outputevents"):
        if files[name] is None:
            log.info("%s: no %s table; its variables are absent from the cohort.", display_path(root), name)


def partition_events(root: Path, windows: pd.DataFrame, prediction_hours: float, lab_time: str,
                     ) -> tuple[list[pd.DataFrame], dict]:
    """The events of the stays in ``windows`` (one group of stays of a build split by stays) and the row
    accounting of the event tables as read for them (:meth:`RowAccounting.to_dict`): what a worker computes."""
    acc = RowAccounting()
    frames = list(event_parts(root, windows, prediction_hours, lab_time, acc, False))
    acc.check()
    return frames, acc.to_dict()


def partition_rows(root: Path, windows: pd.DataFrame, prediction_hours: float, lab_time: str,
                   row_groups: dict[str, range]) -> tuple[list[pd.DataFrame], pa.Table | None, dict]:
    """One worker's share of a build split by row groups: the events of ``row_groups[table]`` of each Parquet
    event table, for all the stays in ``windows``.

    Returns
    -------
    (frames, sums, counts)
        The lab and urine-output events of those rows; the chartevents' hourly counts and sums
        (:func:`~healthfusion.data.sources.hourly.hourly_sums`, whose rows carry their accounting; ``None``
        without chartevents); the row accounting of labevents and outputevents as read by this worker.
    """
    acc, files = RowAccounting(), event_files(root)
    frames = [stream_events(files["labevents"], "labevents", _lab_columns(lab_time), "subject_id", lab_time,
                            "valuenum", mimic4_items("labevents"), windows, acc,
                            row_groups=row_groups["labevents"])]
    sums = None
    if files["chartevents"] is not None:
        sums = hourly_sums(files["chartevents"], CHART_COLUMNS, mimic4_items("chartevents"), windows,
                           prediction_hours, derived=DERIVED, row_groups=row_groups["chartevents"])
    if files["outputevents"] is not None:
        frames.append(stream_events(files["outputevents"], "outputevents", OUTPUT_COLUMNS, "stay_id", "charttime",
                                    "value", mimic4_items("outputevents"), windows, acc,
                                    row_groups=row_groups["outputevents"]))
    acc.check()
    return frames, sums, acc.to_dict()


def partitioned_events(root: Path, windows: pd.DataFrame, prediction_hours: float, lab_time: str,
                       acc: RowAccounting, partitions: Partitions) -> Iterator[pd.DataFrame]:
    """Events of all ``windows`` reduced through ``partitions`` (by row groups when every event table is
    Parquet, else by groups of stays; see the module docstring); their row accounting merged into ``acc`` as
    the events are yielded (the chartevents' as the last of their chunks is)."""
    files = {name: path for name, path in event_files(root).items() if path is not None}
    if all(path.suffix == ".parquet" for path in files.values()):
        splits = {name: split_row_groups(path, partitions.n) for name, path in files.items()}
        log.info("%s: reducing the event tables in %d partitions of Parquet row groups (%s)", display_path(root),
                 partitions.n, ", ".join(f"{name}: {splits[name][-1].stop}" for name in files))
        tasks = [(root, windows, prediction_hours, lab_time, {name: s[i] for name, s in splits.items()})
                 for i in range(partitions.n)]
        results = partitions.map(partition_rows, tasks)
        for _, _, counts in results:
            acc.merge(RowAccounting.from_dict(counts))
        yield from (frame for frames, _, _ in results for frame in frames)
        if "chartevents" in files:
            yield from combine_hourly([sums for _, sums, _ in results], "chartevents", CHART_COLUMNS,
                                      mimic4_items("chartevents"), windows, prediction_hours, acc, derived=DERIVED)
        return
    groups = split_by_patient(windows, partitions.n, patient="subject_id")
    log.info("%s: reducing the event tables in %d partitions of stays", display_path(root), len(groups))
    results = partitions.map(partition_events, [(root, g, prediction_hours, lab_time) for g in groups])
    acc.merge(combine_partitions([RowAccounting.from_dict(counts) for _, counts in results]))
    yield from (frame for frames, _ in results for frame in frames)


def stream_events(
    path: Path, table: str, columns: dict[str, str], key: str, time_col: str, value_col: str,
    items: pd.DataFrame, windows: pd.DataFrame, acc: RowAccounting, progress: bool = False,
    row_groups: range | None = None,
) -> pd.DataFrame:
    """Stream an itemid-coded event table into canonical events of the cohort's stays, counting every row.

    ``items`` is indexed by itemid (columns variable, factor, offset); ``windows`` has ``key`` (subject_id or
    stay_id, int), ``stay_id`` (str), ``intime``, ``start`` and ``end`` (hours). Returns events columns
    stay_id, time, variable, value. With ``row_groups`` (Parquet only) only those row groups are read.
    """
    item_ids = pa.array(items.index.to_numpy(dtype="int64"))
    keys = pa.array(windows[key if key != "stay_id" else "stay_key"].to_numpy(dtype="int64"))
    right = windows.rename(columns={"stay_key": "stay_id_key"}) if key == "stay_id" else windows
    join_on = "stay_id_key" if key == "stay_id" else key
    out = []
    for i, t in enumerate(stream_table(path, columns, row_groups)):
        acc.read(table, t.num_rows)
        if progress and i % 20 == 0:
            log.info("%s: %d rows read", table, acc.tables[table].read)
        t = keep_rows(t, pc.is_in(t["itemid"], value_set=item_ids), acc, table, "unmapped item")
        t = keep_rows(t, pc.is_in(t[key], value_set=keys), acc, table,
                  "subject not in cohort" if key == "subject_id" else "stay not in cohort")
        if t.num_rows == 0:
            continue
        df = t.to_pandas().rename(columns={time_col: "when"})
        no_time = df["when"].isna()
        acc.drop(table, "missing time", int(no_time.sum()))
        df = df[~no_time]
        mapped = items.loc[df["itemid"].to_numpy()]
        df = pd.DataFrame({
            "_row": df["_row"].to_numpy(), join_on: df[key].to_numpy(), "when": df["when"].to_numpy(),
            "variable": mapped["variable"].to_numpy(),
            "value": df[value_col].to_numpy() * mapped["factor"].to_numpy() + mapped["offset"].to_numpy(),
        })
        df = drop_implausible(df, acc, table)
        m = df.merge(right[[join_on, "stay_id", "intime", "start", "end"]], on=join_on)
        m["time"] = (m["when"] - m["intime"]) / np.timedelta64(1, "h")
        m = m[(m["time"] >= m["start"]) & (m["time"] <= m["end"])]
        used = m["_row"].nunique()
        acc.use(table, used)
        acc.drop(table, "outside stay window", len(df) - used)
        out.append(m[["stay_id", "time", "variable", "value"]])
    if not out:
        return pd.DataFrame({"stay_id": pd.Series(dtype=object), "time": pd.Series(dtype=float),
                             "variable": pd.Series(dtype=object), "value": pd.Series(dtype=float)})
    return pd.concat(out, ignore_index=True)
