"""Label sources of ``healthfusion multitask`` tasks: cohort labels, thresholds, static or stays columns, ICD-9
diagnosis groups (see :mod:`healthfusion.workflows.multitask` for the config syntax)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import UnknownLabelError
from healthfusion.features.compose import encode_target

# ICD-9 diagnosis groups of Strack et al. (2014), the paper that released the Diabetes 130 data: (name, ranges of
# the numeric code part, inclusive); "diabetes" is 250.xx; V and E codes and everything else are "other".
ICD9_GROUPS: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = (
    ("circulatory", ((390, 459.99), (785, 785.99))),
    ("respiratory", ((460, 519.99), (786, 786.99))),
    ("digestive", ((520, 579.99), (787, 787.99))),
    ("diabetes", ((250, 250.99),)),
    ("injury", ((800, 999.99),)),
    ("musculoskeletal", ((710, 739.99),)),
    ("genitourinary", ((580, 629.99), (788, 788.99))),
    ("neoplasms", ((140, 239.99),)),
)
ICD9_GROUP_NAMES: tuple[str, ...] = (*(g for g, _ in ICD9_GROUPS), "other")


def icd9_group(code: str) -> str:
    """The :data:`ICD9_GROUPS` group of one ICD-9 code (``"other"`` for V/E codes and unlisted ranges)."""
    try:
        value = float(code)
    except ValueError:
        return "other"
    for name, ranges in ICD9_GROUPS:
        if any(lo <= value <= hi for lo, hi in ranges):
            return name
    return "other"


def _column(table: pd.DataFrame | None, column: str, where: str, stay_ids: list[str]) -> pd.Series:
    if table is None or column not in table.columns:
        have = [] if table is None else [c for c in table.columns if c != "stay_id"]
        raise ValueError(f"The cohort's {where} table has no column {column!r} (it has {have}); fix the task source.")
    return table.set_index("stay_id")[column].reindex(stay_ids)


def extract_labels(cohort: Cohort, tasks: Sequence, stay_ids: Sequence[str]) -> tuple[dict, dict]:
    """Encoded labels of every supervised task for ``stay_ids`` and each task's classes.

    Returns
    -------
    (labels, classes)
        ``labels[task]``: binary/regression float ``[n]`` (NaN missing), multiclass int ``[n]`` (-1 missing),
        multilabel float ``[n, K]`` (NaN rows missing). ``classes[task]``: list of class/label names or None.

    Raises
    ------
    ValueError
        Unknown label or column, a kind that does not match the label's, an unknown label value.
    """
    ids = [str(s) for s in stay_ids]
    labels: dict[str, np.ndarray] = {}
    classes: dict[str, list[str] | None] = {}
    for task in tasks:
        src = task.source
        if src is None:
            continue
        if src.label is not None:
            try:
                spec = cohort.meta.label(src.label)
            except UnknownLabelError as exc:
                raise ValueError(f"Task {task.name!r}: {exc}") from None
            expected = "regression" if src.above is not None else task.kind
            if spec.kind != expected:
                raise ValueError(f"Task {task.name!r} is {task.kind} but label {src.label!r} is {spec.kind}"
                                 + (" ('above' needs a regression label)" if src.above is not None else "") + ".")
            values = encode_target(cohort.label(src.label).reindex(ids), spec)
            if src.above is not None:
                values = np.where(np.isnan(values), np.nan, (values > src.above).astype(np.float32))
                values = values.astype(np.float32)
            labels[task.name], classes[task.name] = values, list(spec.classes) if spec.classes else None
        elif src.static is not None or src.stays is not None:
            if task.kind != "multiclass":
                raise ValueError(f"Task {task.name!r}: a static/stays column is a multiclass source, not {task.kind}.")
            where, col = ("static", src.static) if src.static is not None else ("stays", src.stays)
            raw = _column(cohort.static if where == "static" else cohort.stays, col, where, ids)
            text = raw.astype("string").replace({"Unknown": pd.NA, "nan": pd.NA})
            names = sorted(text.dropna().unique().tolist())
            if len(names) < 2:
                raise ValueError(f"Task {task.name!r}: {where} column {col!r} has {len(names)} class(es); need >= 2.")
            lookup = {c: i for i, c in enumerate(names)}
            labels[task.name] = np.array([lookup.get(v, -1) if v is not pd.NA else -1 for v in text], dtype=np.int64)
            classes[task.name] = names
        else:
            if task.kind != "multilabel":
                raise ValueError(f"Task {task.name!r}: codes: icd9_groups is a multilabel source, not {task.kind}.")
            codes = cohort.codes
            if codes is None:
                raise ValueError(f"Task {task.name!r}: the cohort has no codes table to group.")
            groups = codes.assign(group=codes["code"].map(icd9_group))
            names = list(ICD9_GROUP_NAMES)
            hot = pd.crosstab(groups["stay_id"], groups["group"]).reindex(columns=names, fill_value=0).clip(upper=1)
            out = hot.reindex(ids).to_numpy(dtype=np.float32)  # stays without codes: NaN rows (missing)
            labels[task.name], classes[task.name] = out, names
    return labels, classes



def label_source_inputs(cohort: Cohort, tasks: Sequence) -> list[str]:
    """Static columns that carry a task's label, so no task may read them as inputs.

    For every task's label source: ``static: COLUMN`` the column itself; ``stays: COLUMN`` and ``label: NAME`` a
    static column of the same name, the static columns the reader declares the column or label is computed from
    (:attr:`~healthfusion.data.schema.CohortMeta.derived`, e.g. ``care_unit`` <- ``ICUType``) and, for a stays
    column, any categorical static column that matches it one to one (a cohort saved without declarations).
    ``codes:`` sources read no static column (their codes input is refused by the config check).

    Returns
    -------
    list of str
        Static column names, in task order, without repeats.
    """
    static = cohort.static
    columns = [] if static is None else [c for c in static.columns if c != "stay_id"]
    out: list[str] = []
    for task in tasks:
        src = task.source
        if src is None or src.codes is not None:
            continue
        name = src.static or src.stays or src.label
        out += [name] if name in columns else []
        out += [c for c in cohort.meta.derived.get(name, []) if c in columns]
        if src.stays is not None and name in cohort.stays.columns and static is not None:
            out += _one_to_one(cohort, name, [c for c in columns if cohort.meta.feature_types.get(c) == "categorical"])
    return list(dict.fromkeys(out))


def _one_to_one(cohort: Cohort, stays_column: str, candidates: list[str]) -> list[str]:
    """Categorical static columns whose known values map one to one onto ``stays_column``'s known values."""
    target = cohort.stays.set_index("stay_id")[stays_column].astype("string").replace({"Unknown": pd.NA})
    found = []
    for col in candidates:
        pairs = pd.DataFrame({"a": cohort.static.set_index("stay_id")[col].astype("string"), "b": target}).dropna()
        if pairs["b"].nunique() >= 2 and (pairs.groupby("a")["b"].nunique() == 1).all() \
                and (pairs.groupby("b")["a"].nunique() == 1).all():
            found.append(col)
    return found
