"""Partitioned cohort builds: the large event tables of a cohort reduced in parts by separate workers.

A reader that supports it (MIMIC-IV, eICU: ``build(..., partitions=...)``) builds its small tables (stays, static,
codes, labels) once and hands the parts to ``partitions.map``, split one of two ways:

* **by stays** (:func:`split_by_patient`): every worker runs the reader's own per-stay reduction of the event
  tables (the same function the single-process build runs, given fewer stays), reading every row, and returns
  its events and row accounting; the reader merges them into the same cohort folder
  (:func:`~healthfusion.data.accounting.combine_partitions` counts every row once, by reason). Stays are grouped
  by patient, so a patient-keyed event (a lab attached to every stay of its patient in the window) belongs to
  one group only.
* **by rows** (:func:`split_row_groups`, Parquet files only): every worker reads its own range of each file's
  row groups for all the stays, so no worker reads the whole file; the reader adds up the workers' partial
  results (see :mod:`healthfusion.data.sources.mimic4_events`).

The data layer runs nothing in parallel itself: ``partitions`` is any object with ``n`` (the number of groups)
and ``map(function, list_of_argument_tuples) -> list`` (results in order). :class:`Sequential` runs them in this
process; :class:`healthfusion.scale.ray.RayCluster` runs them as Ray tasks.

Example::

    cohort = mimic4.build("mimic-iv", out="cohort", partitions=Sequential(4))   # same folder as without it
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from healthfusion.data.errors import SourceError


class Partitions(Protocol):
    """What a partitioned build needs: how many groups, and a way to run a function over argument tuples."""

    n: int

    def map(self, function: Callable, arguments: Sequence[tuple]) -> list[Any]: ...


class Sequential:
    """``n`` partitions run one after the other in this process (for tests and as the reference)."""

    def __init__(self, n: int):
        if int(n) < 1:
            raise ValueError(f"Sequential needs n >= 1 partitions; got {n!r}.")
        self.n = int(n)

    def map(self, function: Callable, arguments: Sequence[tuple]) -> list[Any]:
        return [function(*args) for args in arguments]


def split_by_patient(stays: pd.DataFrame, n: int, patient: str = "patient_id") -> list[pd.DataFrame]:
    """Split ``stays`` into at most ``n`` non-empty groups of whole patients, balanced by number of stays.

    Patients are dealt, largest first (ties in order of appearance), to the group with the fewest stays so far;
    each group keeps the original row order. Deterministic for a given ``stays`` and ``n``.

    Parameters
    ----------
    stays : DataFrame
        One row per stay with column ``patient``.
    n : int
        Number of groups wanted (>= 1); fewer come back when there are fewer patients.

    Returns
    -------
    list of DataFrame
        Disjoint row subsets of ``stays`` covering all of it.
    """
    if n < 1:
        raise ValueError(f"split_by_patient needs n >= 1; got {n}.")
    codes, _ = pd.factorize(stays[patient], sort=False)
    sizes = np.bincount(codes) if len(codes) else np.zeros(0, dtype=np.int64)
    order = np.argsort(-sizes, kind="stable")
    load = np.zeros(min(n, len(sizes)), dtype=np.int64)
    group_of = np.empty(len(sizes), dtype=np.int64)
    for p in order:
        g = int(np.argmin(load))
        group_of[p] = g
        load[g] += sizes[p]
    groups = group_of[codes]
    return [stays[groups == g] for g in range(len(load))]


def split_row_groups(path: Path, n: int) -> list[range]:
    """Split the row groups of Parquet file ``path`` into ``n`` contiguous ranges of about equal rows.

    Reads only the file's footer. Range ``i`` holds the row groups whose first row falls in the ``i``-th n-th
    of the rows; a range is empty when the file has fewer row groups than ``n``. Together the ranges cover
    every row group once, in order, so each row of the file is read by exactly one range.

    Parameters
    ----------
    path : Path
        A Parquet file.
    n : int
        Number of ranges (>= 1).

    Returns
    -------
    list of range
        ``n`` ranges of row-group indices, for
        :func:`~healthfusion.data.sources.io.stream_table`'s ``row_groups``.

    Raises
    ------
    ValueError
        If ``n < 1``.
    SourceError
        If ``path`` is not readable Parquet (naming it).
    """
    if n < 1:
        raise ValueError(f"split_row_groups needs n >= 1; got {n}.")
    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceError(f"File {path} is not readable Parquet ({exc}); convert it again.") from exc
    rows = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
    first_row = np.concatenate([[0], np.cumsum(rows)[:-1]]) if len(rows) else rows
    # the row group starting at or after each n-th of the rows opens a range
    bounds = np.searchsorted(first_row, np.arange(n + 1) * rows.sum() / n, side="left")
    bounds[0], bounds[-1] = 0, len(rows)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
