"""``healthfusion cohort describe``: counts, label prevalence, missingness per variable, and the same per domain."""

from __future__ import annotations

import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.schema import DOMAIN_COLUMNS
from healthfusion.evaluation.disclosure import SUPPRESSED, count_cell, is_small


def describe_cohort(cohort: Cohort) -> dict[str, pd.DataFrame]:
    """Summary tables of a cohort.

    Returns
    -------
    dict with DataFrames:
        ``tables``: rows per table; ``labels``: per label n, missing and prevalence (binary), mean (regression) or
        class counts; ``variables``: per time-series variable the share of stays with at least one observation and
        observations per stay; ``domains``: per domain column and value, stays and binary label prevalence;
        ``accounting``: the build's row accounting.

    Counts of stays are shared counts (:mod:`~healthfusion.evaluation.disclosure`): a class, variable or domain
    value with fewer than 10 stays shows ``"<10"`` with the shares computed from it, and a domain value's label
    prevalence shows ``"<10"`` when it rests on fewer than 10 events. Row counts of tables and the
    accounting are counts of input rows and are shown as they are.
    """
    stays = cohort.stays
    n = len(stays)
    tables = pd.DataFrame(
        [{"table": name, "rows": len(cohort.read_table(name)) if cohort.has(name) else 0}
         for name in ("stays", "static", "events", "codes", "notes", "images", "labels")]
    )
    label_rows = []
    for spec in cohort.meta.labels:
        col = cohort.label(spec.name)
        row = {"label": spec.name, "kind": spec.kind, "n": int(col.notna().sum()), "missing": int(col.isna().sum())}
        if spec.kind == "binary":
            row["summary"] = f"prevalence {pd.to_numeric(col).mean():.3f}"
        elif spec.kind == "regression":
            v = pd.to_numeric(col)
            row["summary"] = f"mean {v.mean():.2f}, median {v.median():.2f}"
        elif spec.kind == "multiclass":
            row["summary"] = ", ".join(f"{k}: {count_cell(v)}" for k, v in col.value_counts().items())
        else:
            counts = pd.Series([c for v in col.dropna() for c in v]).value_counts()
            row["summary"] = ", ".join(f"{k}: {count_cell(v)}" for k, v in counts.head(8).items())
        label_rows.append(row)
    variables = pd.DataFrame(columns=["variable", "stays_observed", "share_observed", "obs_per_stay"])
    if cohort.has("events"):
        ev = cohort.observable("events")
        g = ev.groupby("variable", observed=True)
        variables = pd.DataFrame({
            "stays_observed": g["stay_id"].nunique(),
            "obs_per_stay": g.size() / max(n, 1),
        }).reset_index()
        variables["share_observed"] = variables["stays_observed"] / max(n, 1)
        variables["missing_share"] = 1.0 - variables["share_observed"]
        variables = variables.sort_values("variable").reset_index(drop=True)
        rare = (variables["stays_observed"] < 10).to_numpy()
        variables = variables.astype({"stays_observed": object, "share_observed": object, "missing_share": object})
        variables.loc[rare, ["stays_observed", "share_observed", "missing_share"]] = SUPPRESSED
    domain_rows = []
    binary = [s.name for s in cohort.meta.labels if s.kind == "binary"]
    for dom in DOMAIN_COLUMNS:
        if dom not in stays.columns:
            continue
        for value, group in stays.groupby(stays[dom].astype("string").fillna("<missing>"), sort=True):
            row = {"domain": dom, "value": value, "stays": count_cell(len(group))}
            for name in binary:
                lab = pd.to_numeric(cohort.label(name).reindex(group["stay_id"])).dropna()
                row[f"{name}_prevalence"] = (SUPPRESSED if is_small(len(lab), int(lab.sum()))
                                             else float(lab.mean()))
            domain_rows.append(row)
    return {
        "tables": tables,
        "labels": pd.DataFrame(label_rows),
        "variables": variables,
        "domains": pd.DataFrame(domain_rows),
        "accounting": cohort.accounting.to_frame(),
    }
