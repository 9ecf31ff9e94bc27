"""Robustness across domains: how much a model's discrimination varies between care units, hospitals or
demographic groups, built on the per-group table of :func:`~healthfusion.evaluation.fairness.group_metrics`.

Example::

    groups, spread = domain_spread(y_test, p_test, stays[["care_unit", "age_group", "sex"]])
    spread  # per attribute: n_groups, worst/best group and AUROC, range, SD over groups, small groups left out
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from healthfusion.evaluation.disclosure import comparable, group_label
from healthfusion.evaluation.fairness import group_metrics

SPREAD_COLUMNS = ("attribute", "n_groups", "worst_group", "worst_auroc", "best_group", "best_auroc", "auroc_range",
                  "auroc_sd", "excluded")


def domain_spread(y_true: Any, y_prob: Any, domains: Any, n_boot: int = 500,
                  seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group metrics (with n and bootstrap CIs) and, per attribute, the spread of AUROC over its groups.

    Groups that are not :func:`~healthfusion.evaluation.disclosure.comparable` (fewer than 10 stays, events or
    non-events) stay in the group
    table but are left out of the spread, which names them in ``excluded``.

    Returns
    -------
    (groups, spread)
        ``groups``: :func:`group_metrics` output; ``spread``: one row per attribute with :data:`SPREAD_COLUMNS`
        (NaN where fewer than two groups qualify).

    Raises
    ------
    ValueError
        As :func:`group_metrics` (bad predictions, a domains frame of the wrong length).
    """
    groups = group_metrics(y_true, y_prob, domains, n_boot=n_boot, seed=seed)
    rows = []
    for attribute, table in groups.groupby("attribute", sort=False):
        ok = table["auroc"].notna() & np.array([comparable(int(n), int(e)) for n, e in
                                                table[["n", "n_positive"]].to_numpy()], dtype=bool)
        used, left = table[ok], table[~ok]
        row = {"attribute": attribute, "n_groups": int(len(used)),
               "excluded": "; ".join(group_label(g, int(n)) for g, n in left[["group", "n"]].to_numpy())}
        if len(used) >= 2:
            worst, best = used.loc[used["auroc"].idxmin()], used.loc[used["auroc"].idxmax()]
            row.update(worst_group=worst["group"], worst_auroc=float(worst["auroc"]), best_group=best["group"],
                       best_auroc=float(best["auroc"]), auroc_range=float(best["auroc"] - worst["auroc"]),
                       auroc_sd=float(np.std(used["auroc"].to_numpy(), ddof=1)))
        rows.append(row)
    return groups, pd.DataFrame(rows).reindex(columns=list(SPREAD_COLUMNS))
