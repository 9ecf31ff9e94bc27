"""Per-stay summary statistics of long-format events: the engineered features of the classical baselines.

Example
-------
>>> import pandas as pd
>>> events = pd.DataFrame({"stay_id": [1, 1, 2], "time": [0.0, 2.0, 1.0],
...                        "variable": ["HR", "HR", "HR"], "value": [80.0, 90.0, 70.0]})
>>> summary_features(events, [1, 2, 3], ["HR"], stats=("last", "count"))  # doctest: +NORMALIZE_WHITESPACE
         HR__last  HR__count
stay_id
1            90.0          2
2            70.0          1
3             NaN          0
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import pandas as pd

logger = logging.getLogger(__name__)

SUMMARY_STATS: tuple[str, ...] = ("last", "mean", "min", "max", "std", "count")
"""The default statistics of :func:`summary_features`."""

EXTRA_STATS: tuple[str, ...] = ("first", "sum", "slope")
"""Further statistics :func:`summary_features` can compute on request."""

ALL_STATS: tuple[str, ...] = SUMMARY_STATS + EXTRA_STATS
"""Every statistic :func:`summary_features` can compute."""

EVENT_COLUMNS: tuple[str, ...] = ("stay_id", "time", "variable", "value")


def _check_stats(stats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(stats, str):
        raise ValueError(f"Expected stats to be a sequence of names, got the string {stats!r}; use ({stats!r},).")
    stats = tuple(stats)
    if not stats:
        raise ValueError(f"Expected at least one statistic out of {', '.join(ALL_STATS)}, got none.")
    for stat in stats:
        if stat not in ALL_STATS:
            close = difflib.get_close_matches(str(stat), ALL_STATS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown statistic {stat!r}; expected one of {', '.join(ALL_STATS)}.{hint}")
    if len(set(stats)) != len(stats):
        raise ValueError(f"Expected distinct statistics, got {stats}.")
    return stats


def summary_features(
    events: pd.DataFrame,
    stay_ids: Sequence,
    variables: Sequence[str],
    stats: Sequence[str] = SUMMARY_STATS,
) -> pd.DataFrame:
    """Summarise each variable's observations per stay.

    Events must already be restricted to what is known at the prediction time (e.g. the first 48 h): every row
    given here is used.

    Args:
        events: long-format table with columns ``stay_id``, ``time`` (numeric or datetime), ``variable`` and
            ``value`` (numeric). Rows with a missing ``value``, a stay not in ``stay_ids`` or a variable not in
            ``variables`` are ignored.
        stay_ids: the stays to describe, in output order (distinct).
        variables: the variables to describe, in column order (distinct).
        stats: any of :data:`ALL_STATS` (default :data:`SUMMARY_STATS`). ``last`` is the value at the latest time
            (ties at the same time: the row that comes last in ``events``), ``first`` the value at the earliest
            (ties: the row that comes first); ``std`` is the sample standard deviation (``ddof=1``, so ``nan``
            with fewer than two observations); ``count`` is the number of observations and ``sum`` their total
            (e.g. the urine output over the window); ``slope`` is the least-squares slope of value on time, per
            hour (datetime times are converted to hours), ``nan`` unless observed at two distinct times.

    Returns:
        DataFrame indexed by ``stay_id`` (in the order of ``stay_ids``) with columns ``f"{variable}__{stat}"``
        ordered by variable, then statistic. Statistics are float64 and ``nan`` where the variable was never
        observed in a stay; ``count`` is int64 and 0 there.

    Raises:
        ValueError: a missing column, non-numeric ``value``, missing ``time`` in a used row, duplicated
            ``stay_ids`` or ``variables``, or an unknown statistic (with a "did you mean").
    """
    stats = _check_stats(stats)
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(
            f"Expected events with columns {list(EVENT_COLUMNS)}, missing {missing} (got {list(events.columns)})."
        )
    if not pd.api.types.is_numeric_dtype(events["value"]) or pd.api.types.is_bool_dtype(events["value"]):
        raise ValueError(
            f"Expected a numeric 'value' column, got dtype {events['value'].dtype}; encode categorical "
            f"variables before summarising them."
        )
    stay_index = pd.Index(list(stay_ids), name="stay_id")
    if stay_index.has_duplicates:
        dup = stay_index[stay_index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"Expected distinct stay_ids, got duplicates {dup}.")
    variables = list(variables)
    if len(set(variables)) != len(variables):
        raise ValueError(f"Expected distinct variables, got {variables}.")

    used = events.loc[
        events["stay_id"].isin(stay_index) & events["variable"].isin(variables) & events["value"].notna(),
        list(EVENT_COLUMNS),
    ]
    if used["time"].isna().any():
        raise ValueError(
            f"Expected a time for every observed event, got {int(used['time'].isna().sum())} row(s) with a "
            f"missing time; drop or fix them before summarising."
        )
    if len(events) and used.empty:
        logger.warning(
            "None of the %d events matched the %d stay_ids and %d variables; check that the id and variable "
            "types match (e.g. int vs str).", len(events), len(stay_index), len(variables),
        )

    columns = [f"{var}__{stat}" for var in variables for stat in stats]
    if used.empty:
        out = pd.DataFrame(float("nan"), index=stay_index, columns=columns, dtype="float64")
    else:
        # sort by time within (stay, variable); the original position breaks ties so "last" is reproducible
        used = used.assign(_row=range(len(used))).sort_values(["stay_id", "variable", "time", "_row"])
        grouped = used.groupby(["stay_id", "variable"], sort=False, observed=True)["value"]
        plain = [s for s in stats if s != "slope"]
        agg = grouped.agg(plain) if plain else pd.DataFrame(index=grouped.size().index)
        if "slope" in stats:
            agg = agg.assign(slope=_slopes(used))[list(stats)]
        agg.index = agg.index.set_names(["stay_id", "variable"])
        wide = agg.unstack("variable")  # columns: (stat, variable)
        wide.columns = [f"{var}__{stat}" for stat, var in wide.columns]
        out = wide.reindex(index=stay_index, columns=columns).astype("float64")
    for var in variables:
        if "sum" in stats:
            out[f"{var}__sum"] = out[f"{var}__sum"].fillna(0.0)
        if "count" in stats:
            out[f"{var}__count"] = out[f"{var}__count"].fillna(0).astype("int64")
    out.index.name = "stay_id"
    return out


def _slopes(used: pd.DataFrame) -> pd.Series:
    """Least-squares slope of value on time (per hour) for each (stay, variable) of sorted, used events."""
    t = used["time"]
    if pd.api.types.is_datetime64_any_dtype(t):
        t = (t - t.min()) / pd.Timedelta(hours=1)
    frame = pd.DataFrame({"stay_id": used["stay_id"].to_numpy(), "variable": used["variable"].to_numpy(),
                          "t": t.to_numpy(dtype="float64"), "v": used["value"].to_numpy(dtype="float64")})
    keys = ["stay_id", "variable"]
    g = frame.groupby(keys, sort=False, observed=True)
    centred_t = frame["t"] - g["t"].transform("mean")
    centred_v = frame["v"] - g["v"].transform("mean")
    sums = frame[keys].assign(tv=centred_t * centred_v, tt=centred_t * centred_t).groupby(
        keys, sort=False, observed=True)[["tv", "tt"]].sum()
    span = g["t"].max() - g["t"].min()
    return (sums["tv"] / sums["tt"]).where(span > 0).rename("slope")
