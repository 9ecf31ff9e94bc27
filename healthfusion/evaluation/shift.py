"""How far apart two domains are: a domain classifier's AUROC and per-variable distribution differences.

* :func:`stay_summaries` turns gridded time series ``[N, T, V]`` (+ mask) into one row per stay: the mean of each
  variable's observed values and the fraction of time bins in which it was observed (missingness differs between
  care units and hospitals as much as values do), plus any static columns.
* :func:`domain_classifier_auroc`: a logistic regression telling source from target stays, scored by stratified
  K-fold cross-validation. 0.5 means the domains are indistinguishable from these features; 1.0 means any stay's
  domain is obvious. Reported with a bootstrap CI over the out-of-fold scores.
* :func:`variable_shift`: per variable, the standardized mean difference (target minus source over the pooled
  standard deviation) and the two-sample Kolmogorov-Smirnov statistic, with the counts behind each.

Example::

    src, tgt = stay_summaries(values_s, mask_s, variables), stay_summaries(values_t, mask_t, variables)
    auc = domain_classifier_auroc(src, tgt, seed=0)      # BootstrapCI(value=0.71, ...)
    table = variable_shift(src, tgt)                      # sorted by |SMD|
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from healthfusion.evaluation.bootstrap import BootstrapCI, bootstrap_ci
from healthfusion.evaluation.metrics import auroc

SHIFT_COLUMNS = ("variable", "smd", "ks", "ks_pvalue", "mean_source", "mean_target", "n_source", "n_target")


def stay_summaries(values: np.ndarray, mask: np.ndarray, variables: Sequence[str],
                   static: np.ndarray | None = None, static_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per stay: ``<var>`` = mean of observed values (NaN if never observed), ``<var>__observed`` = fraction of
    observed bins, and the static columns as given.

    Raises
    ------
    ValueError
        If shapes disagree with each other or with ``variables``/``static_names``.
    """
    values = np.asarray(values, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    if values.ndim != 3 or mask.shape != values.shape or values.shape[2] != len(variables):
        raise ValueError(f"Expected values and mask [N, T, {len(variables)}] alike, got {values.shape} and "
                         f"{mask.shape}.")
    counts = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, (values * mask).sum(axis=1) / counts, np.nan)
    frame = pd.DataFrame(means, columns=list(variables))
    observed = pd.DataFrame(counts / values.shape[1], columns=[f"{v}__observed" for v in variables])
    parts = [frame, observed]
    if static is not None:
        static = np.asarray(static, dtype=np.float64)
        names = list(static_names) if static_names is not None else [f"static_{i}" for i in range(static.shape[1])]
        if static.ndim != 2 or static.shape != (len(values), len(names)):
            raise ValueError(f"Expected static [{len(values)}, {len(names)}], got {static.shape}.")
        parts.append(pd.DataFrame(static, columns=names))
    out = pd.concat(parts, axis=1)
    dup = out.columns[out.columns.duplicated()].tolist()
    if dup:
        raise ValueError(f"Column name(s) {dup} occur twice (a static name equals a time-series variable); "
                         "prefix the static names, e.g. 'static:Weight'.")
    return out


def _check_frames(source: pd.DataFrame, target: pd.DataFrame) -> None:
    if list(source.columns) != list(target.columns):
        raise ValueError("source and target summaries must have the same columns in the same order; got "
                         f"{list(source.columns)[:5]}... and {list(target.columns)[:5]}...")
    if len(source) < 2 or len(target) < 2:
        raise ValueError(f"Need at least 2 stays per domain; got {len(source)} source and {len(target)} target.")


def domain_classifier_auroc(source: pd.DataFrame, target: pd.DataFrame, folds: int = 5, seed: int = 0,
                            n_boot: int = 500) -> BootstrapCI:
    """Cross-validated AUROC of a logistic regression separating ``target`` (1) from ``source`` (0) stays.

    Missing values are imputed with the training fold's column mean (0 after standardisation) and flagged by the
    ``__observed`` columns that :func:`stay_summaries` adds. Out-of-fold scores of every stay give one AUROC; its
    interval is a stratified bootstrap over stays.

    Raises
    ------
    ValueError
        Mismatched columns, fewer than 2 stays in a domain, or fewer stays in a domain than ``folds``.
    """
    _check_frames(source, target)
    if min(len(source), len(target)) < folds:
        raise ValueError(f"{folds}-fold CV needs at least {folds} stays per domain; got {len(source)} source and "
                         f"{len(target)} target.")
    x = pd.concat([source, target], ignore_index=True).to_numpy(dtype=np.float64)
    y = np.r_[np.zeros(len(source)), np.ones(len(target))]
    scores = np.zeros(len(y))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        mean = np.nanmean(x[train], axis=0)
        mean = np.where(np.isnan(mean), 0.0, mean)
        xt = np.where(np.isnan(x[train]), mean, x[train])
        xs = np.where(np.isnan(x[test]), mean, x[test])
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        scores[test] = clf.fit(xt, y[train]).predict_proba(xs)[:, 1]
    return bootstrap_ci(auroc, y, scores, n_boot=n_boot, seed=seed)


def variable_shift(source: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """Per column: standardized mean difference, KS statistic and p-value, means and non-missing counts.

    SMD = (mean_target - mean_source) / sqrt((var_source + var_target) / 2) over non-missing values (0 when both
    variances are 0; NaN when a side has no value). Rows are sorted by ``|smd|``, largest first.

    Raises
    ------
    ValueError
        Mismatched columns or fewer than 2 stays per domain.
    """
    _check_frames(source, target)
    rows = []
    for col in source.columns:
        s = source[col].dropna().to_numpy(dtype=np.float64)
        t = target[col].dropna().to_numpy(dtype=np.float64)
        if len(s) == 0 or len(t) == 0:
            rows.append((col, np.nan, np.nan, np.nan, np.nan, np.nan, len(s), len(t)))
            continue
        pooled = np.sqrt((s.var(ddof=1 if len(s) > 1 else 0) + t.var(ddof=1 if len(t) > 1 else 0)) / 2.0)
        diff = t.mean() - s.mean()
        smd = 0.0 if pooled == 0 and diff == 0 else (diff / pooled if pooled > 0 else np.inf * np.sign(diff))
        ks = ks_2samp(s, t)
        rows.append((col, float(smd), float(ks.statistic), float(ks.pvalue), float(s.mean()), float(t.mean()),
                     len(s), len(t)))
    table = pd.DataFrame(rows, columns=list(SHIFT_COLUMNS))
    return table.reindex(table["smd"].abs().sort_values(ascending=False, na_position="last").index).reset_index(
        drop=True)
