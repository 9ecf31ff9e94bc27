"""Small-cell suppression: the one place that says which counts and group statistics may be shared.

A group (a subgroup of a fairness table, a calibration bin, a domain of a cohort description, the flagged stays of
an impact analysis) is *small* when it has fewer than :data:`MIN_CELL` stays or fewer than :data:`MIN_CELL` events.
Tables, figures and CSV files meant for sharing show :data:`SUPPRESSED` (``"<10"``) in place of a count under the
limit and of every statistic computed from a small group. Gaps and ranges between groups use only *comparable*
groups (not small, and at least :data:`MIN_CELL` non-events too): a subgroup AUROC from one event says nothing
about fairness. Library functions return the raw numbers; the writers of shareable outputs pass them through
these functions.

Example
-------
>>> is_small(n=40, events=3), is_small(n=40, events=12), comparable(n=40, events=35)
(True, False, False)
>>> count_cell(7), count_cell(12)
('<10', 12)
>>> frame = pd.DataFrame({"group": ["a", "b"], "n": [40, 120], "n_positive": [3, 30], "auroc": [0.2, 0.8]})
>>> suppress_groups(frame, keep=("group",))["auroc"].tolist()
['<10', 0.8]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

#: fewest stays and events a group needs before its counts or statistics are shown
MIN_CELL = 10
#: what a suppressed cell shows
SUPPRESSED = f"<{MIN_CELL}"
#: how the rule reads in captions and notes
RULE = f"groups with fewer than {MIN_CELL} stays or {MIN_CELL} events show {SUPPRESSED!r}"


def is_small(n: int, events: int | None = None) -> bool:
    """True when a group of ``n`` stays with ``events`` events (None: no outcome known) must be suppressed:
    fewer than :data:`MIN_CELL` stays or events."""
    return bool(n < MIN_CELL or (events is not None and events < MIN_CELL))


def comparable(n: int, events: int) -> bool:
    """True when a group may enter a comparison between groups (a fairness gap, an AUROC range, a group-aware
    threshold): not :func:`is_small` and at least :data:`MIN_CELL` non-events, so both outcomes are estimable."""
    return not is_small(n, events) and n - events >= MIN_CELL


def count_cell(count: float) -> int | str | float:
    """A count as shared: the integer, or :data:`SUPPRESSED` when it is below :data:`MIN_CELL` (zero included); a
    missing count (NaN: e.g. the events of a task without outcome classes) stays missing."""
    if np.isnan(float(count)):
        return float("nan")
    value = int(round(float(count)))
    return SUPPRESSED if value < MIN_CELL else value


def group_label(name: object, n: int) -> str:
    """``"name (n=123)"``, or ``"name (n<10)"`` for a group under :data:`MIN_CELL` stays (lists of excluded
    groups)."""
    return f"{name} (n={n})" if n >= MIN_CELL else f"{name} (n{SUPPRESSED})"


def suppress_groups(frame: pd.DataFrame, n: str = "n", events: str | None = "n_positive",
                    keep: Sequence[str] = ()) -> pd.DataFrame:
    """A copy of ``frame`` (one row per group) where a small group's row shows its stays and events as
    :func:`count_cell` shows them (``"<10"`` under the limit) and :data:`SUPPRESSED` in every other cell except
    the columns ``keep`` (the group's name); other rows are unchanged.

    Parameters
    ----------
    n, events : str
        Columns holding the group's stays and events (``events=None``: no outcome column, stays only).
    keep : sequence of str
        Columns that name the group and stay visible.

    Raises
    ------
    ValueError
        If ``n`` or ``events`` is not a column of ``frame`` (the columns present are listed).
    """
    missing = [c for c in (n, events) if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"Cannot suppress small cells: column(s) {missing} not in the table; columns: "
                         f"{list(frame.columns)}.")
    small = small_groups(frame, n, events)
    out = frame.astype(object).copy()
    hide = [c for c in out.columns if c not in (*keep, n, events)]
    out.loc[small, hide] = SUPPRESSED
    for col in (n, events):
        if col is not None:
            out.loc[small, col] = [count_cell(v) for v in frame.loc[small, col]]
    return out


def small_groups(frame: pd.DataFrame, n: str = "n", events: str | None = "n_positive") -> np.ndarray:
    """Boolean mask ``[len(frame)]`` of the rows of a per-group table that :func:`is_small` suppresses."""
    sizes = pd.to_numeric(frame[n]).to_numpy(float)
    counts = pd.to_numeric(frame[events]).to_numpy(float) if events is not None else np.full(len(frame), np.nan)
    return np.array([is_small(int(s), None if np.isnan(e) else int(e)) for s, e in zip(sizes, counts, strict=True)],
                    dtype=bool)


#: (stays, events) columns of the per-row counts of healthfusion's tables, in the order they are looked for
COUNT_COLUMNS: tuple[tuple[str, str], ...] = (("n", "n_positive"), ("n_test", "n_test_positive"))
#: stays columns of tables with one count per compared side (a variable's shift: source and target stays)
SIDE_COLUMNS: tuple[str, ...] = ("n_source", "n_target")


def suppress_small_rows(frame: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
    """A copy of a results table (one row per model, task, seed ...) as shared: a row whose stays or events are
    under the limit is suppressed as :func:`suppress_groups` does. The counts are the first pair of
    :data:`COUNT_COLUMNS` the table has; without the events column, ``prevalence`` times the stays gives the events
    (an events column is added), and without either only the stays count. A table with :data:`SIDE_COLUMNS`
    instead (one stays count per side) suppresses a row where any side is under the limit. A table with none of
    these is returned unchanged. ``keep``: the columns that name a row and stay visible (also every non-numeric
    column).

    Example
    -------
    >>> table = pd.DataFrame({"task": ["death", "los"], "n": [50, 8], "prevalence": [0.1, None], "auroc": [0.7, None]})
    >>> suppress_small_rows(table)[["task", "n", "n_positive", "auroc"]].values.tolist()
    [['death', 50, '<10', '<10'], ['los', '<10', nan, '<10']]
    """
    pairs = [pair for pair in COUNT_COLUMNS if pair[0] in frame.columns]
    named = [c for c in frame.columns if c in keep or not pd.api.types.is_numeric_dtype(frame[c])]
    if not pairs:
        sides = [c for c in SIDE_COLUMNS if c in frame.columns]
        if not sides:
            return frame
        small = (frame[sides].apply(pd.to_numeric) < MIN_CELL).any(axis=1).to_numpy()
        out = frame.astype(object).copy()
        out.loc[small, [c for c in out.columns if c not in (*named, *sides)]] = SUPPRESSED
        for col in sides:
            out.loc[small, col] = [count_cell(v) for v in frame.loc[small, col]]
        return out
    n, events = pairs[0]
    frame = frame.copy()
    if events not in frame.columns and "prevalence" in frame.columns:
        frame[events] = (pd.to_numeric(frame[n]) * pd.to_numeric(frame["prevalence"])).round()
    return suppress_groups(frame, n=n, events=events if events in frame.columns else None,
                           keep=[c for c in named if c not in (n, events)])

