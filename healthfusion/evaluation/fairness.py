"""Subgroup audit of a binary risk model: per-group metrics with n and CIs, fairness gaps, one mitigation.

Per group of each attribute (age band, sex, ethnicity, care unit, site ...): n, events, AUROC, TPR (sensitivity),
FPR, PPV, and calibration (observed event rate minus mean predicted risk; ECE, calibration slope and intercept),
each with a percentile-bootstrap 95% interval. Small groups (fewer than 10 stays or events: :mod:`healthfusion.evaluation.disclosure`) stay in the
table, flagged ``small_group``; the gaps use only comparable groups (not small, and 10 non-events too) and list the
others: a subgroup AUROC from one event must not drive a fairness gap. Gaps are Fairlearn's equalised-odds and demographic-parity
differences at the model's threshold. The mitigation is group-aware thresholds (Fairlearn's ``ThresholdOptimizer``
under an equalised-odds constraint), fitted on validation predictions and applied to test.

Example
-------
>>> table = group_metrics(y_test, p_test, domains[["sex", "age_group"]], threshold=0.3)  # doctest: +SKIP
>>> gaps = fairness_gaps(y_test, p_test, domains[["sex"]], threshold=0.3)                # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.base import BaseEstimator, ClassifierMixin

from healthfusion.evaluation.bootstrap import bootstrap_ci, metrics_with_ci
from healthfusion.evaluation.calibration import CALIBRATION_METRICS, calibration_with_ci
from healthfusion.evaluation.disclosure import RULE, comparable, group_label, is_small
from healthfusion.evaluation.metrics import auroc, check_binary_input

logger = logging.getLogger(__name__)

ArrayLike = Any
GROUP_COLUMNS = ("attribute", "group", "n", "n_positive", "small_group")


def _groups_frame(groups: Any, n: int) -> pd.DataFrame:
    frame = groups.to_frame() if isinstance(groups, pd.Series) else pd.DataFrame(groups)
    if len(frame) != n:
        raise ValueError(f"groups has {len(frame)} rows but y_true has {n}; pass one group row per prediction.")
    if frame.shape[1] == 0:
        raise ValueError("groups has no columns; pass a frame with one column per attribute (e.g. sex, site).")
    return frame.reset_index(drop=True).astype("string").fillna("Unknown")


def _calibration_gap(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(y) - np.mean(p))


def group_metrics(y_true: ArrayLike, y_prob: ArrayLike, groups: Any, threshold: float = 0.5, n_boot: int = 500,
                  seed: int = 0) -> pd.DataFrame:
    """One row per (attribute, group): n, n_positive, small_group (:func:`~healthfusion.evaluation.disclosure.is_small`)
    and, each with ``_ci_low``/``_ci_high``,
    ``auroc``, ``tpr``, ``fpr``, ``ppv``, ``calibration_gap`` (observed rate - mean predicted risk; > 0 means
    risk is underestimated in the group), ``ece``, ``cal_slope`` and ``cal_intercept``
    (:func:`~healthfusion.evaluation.calibration.calibration_with_ci`; slope and intercept NaN in a group with one
    outcome), plus ``observed_rate`` and ``mean_predicted``.

    Parameters
    ----------
    groups : DataFrame or Series
        One column per attribute, one row per prediction (missing values become ``"Unknown"``).
    threshold : float
        Operating point for TPR/FPR/PPV (choose it on validation data).

    Raises
    ------
    ValueError
        Bad predictions (see :func:`~healthfusion.evaluation.metrics.check_binary_input`) or a groups frame with
        the wrong number of rows.
    """
    y, p = check_binary_input(y_true, y_prob)
    frame = _groups_frame(groups, y.size)
    rows = []
    for attribute in frame.columns:
        for group, idx in frame.groupby(attribute, sort=True).indices.items():
            yg, pg = y[idx], p[idx]
            row: dict[str, Any] = {"attribute": attribute, "group": group, "n": int(idx.size),
                                   "n_positive": int(yg.sum()), "small_group": is_small(int(idx.size), int(yg.sum())),
                                   "observed_rate": float(yg.mean()), "mean_predicted": float(pg.mean())}
            table = metrics_with_ci(yg, pg, threshold=threshold, n_boot=n_boot, seed=seed).set_index("metric")
            for name, source in (("auroc", "auroc"), ("tpr", "recall"), ("ppv", "precision")):
                row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = table.loc[
                    source, ["value", "ci_low", "ci_high"]]
            spec = table.loc["specificity"]
            row["fpr"], row["fpr_ci_low"], row["fpr_ci_high"] = 1 - spec["value"], 1 - spec["ci_high"], 1 - spec["ci_low"]
            ci = bootstrap_ci(_calibration_gap, yg, pg, n_boot=n_boot, seed=seed, stratified=False)
            row["calibration_gap"], row["calibration_gap_ci_low"], row["calibration_gap_ci_high"] = (
                ci.value, ci.ci_low, ci.ci_high)
            cal = calibration_with_ci(yg, pg, n_boot=n_boot, seed=seed).set_index("metric")
            for name in CALIBRATION_METRICS:
                row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = cal.loc[name, ["value", "ci_low", "ci_high"]]
            rows.append(row)
    out = pd.DataFrame(rows)
    small = out[out["small_group"]]
    if len(small):
        logger.warning("Small groups (%s; flagged small_group): %s", RULE,
                       ", ".join(f"{a}={g}" for a, g in small[["attribute", "group"]].to_numpy()))
    return out


def fairness_gaps(y_true: ArrayLike, y_prob: ArrayLike, groups: Any, threshold: float = 0.5,
                  y_pred: ArrayLike | None = None) -> pd.DataFrame:
    """Per attribute: Fairlearn's ``equalized_odds_difference`` and ``demographic_parity_difference`` of the
    decisions ``y_prob >= threshold`` (or the given ``y_pred``), the AUROC range over groups, the number of groups
    compared and the groups left out (``excluded``: fewer than 10 stays, events or non-events, see
    :func:`~healthfusion.evaluation.disclosure.comparable`); ``auroc_range`` covers the groups compared.

    Raises
    ------
    ValueError
        As :func:`group_metrics`.
    """
    y, p = check_binary_input(y_true, y_prob)
    frame = _groups_frame(groups, y.size)
    decisions = (p >= threshold).astype(int) if y_pred is None else np.asarray(y_pred).astype(int)
    rows = []
    for attribute in frame.columns:
        sizes = frame[attribute].value_counts()
        events = pd.Series(y).groupby(frame[attribute].to_numpy()).sum()
        small = [g for g in sizes.index if not comparable(int(sizes[g]), int(events[g]))]
        keep_groups = sizes.index[~sizes.index.isin(small)]
        excluded = [group_label(g, int(sizes[g])) for g in small]
        keep = frame[attribute].isin(keep_groups).to_numpy()
        row = {"attribute": attribute, "n_groups": int(len(keep_groups)), "excluded": "; ".join(excluded),
               "equalized_odds_difference": float("nan"), "demographic_parity_difference": float("nan"),
               "auroc_range": float("nan")}
        if len(keep_groups) >= 2:
            sf = frame[attribute].to_numpy()[keep]
            row["equalized_odds_difference"] = float(equalized_odds_difference(
                y[keep].astype(int), decisions[keep], sensitive_features=sf))
            row["demographic_parity_difference"] = float(demographic_parity_difference(
                y[keep].astype(int), decisions[keep], sensitive_features=sf))
            aurocs = [auroc(y[keep][sf == g], p[keep][sf == g]) for g in keep_groups]
            row["auroc_range"] = float(max(aurocs) - min(aurocs)) if len(aurocs) >= 2 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


class _Scores(ClassifierMixin, BaseEstimator):
    """A prefit 'estimator' whose prediction is the score column itself (Fairlearn post-processes it)."""

    def fit(self, x, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict(self, x):
        return np.asarray(x)[:, 0]


def group_thresholds(y_val: ArrayLike, p_val: ArrayLike, groups_val: ArrayLike, y_test: ArrayLike,
                     p_test: ArrayLike, groups_test: ArrayLike, threshold: float = 0.5,
                     constraints: str = "equalized_odds", seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Mitigation: group-aware (randomised) thresholds from Fairlearn's ``ThresholdOptimizer``, fitted on the
    VALIDATION predictions of one attribute and applied to test.

    Returns
    -------
    decisions : ndarray [n_test] of 0/1
        The mitigated test decisions.
    effect : DataFrame
        Rows ``accuracy``, ``tpr``, ``fpr``, ``equalized_odds_difference``, ``demographic_parity_difference``;
        columns ``before`` (single threshold) and ``after`` (group-aware), on the test predictions.

    Raises
    ------
    ValueError
        Bad predictions, or a validation set where a group lacks one of the outcomes (the message from Fairlearn).
    """
    from fairlearn.postprocessing import ThresholdOptimizer

    yv, pv = check_binary_input(y_val, p_val)
    yt, pt = check_binary_input(y_test, p_test)
    gv = pd.Series(np.asarray(groups_val)).astype("string").fillna("Unknown").to_numpy()
    gt = pd.Series(np.asarray(groups_test)).astype("string").fillna("Unknown").to_numpy()
    optimizer = ThresholdOptimizer(estimator=_Scores().fit(pv[:, None], yv), constraints=constraints, predict_method="predict",
                                   prefit=True, objective="balanced_accuracy_score")
    optimizer.fit(pv[:, None], yv.astype(int), sensitive_features=gv)
    after = np.asarray(optimizer.predict(pt[:, None], sensitive_features=gt, random_state=seed)).astype(int)
    before = (pt >= threshold).astype(int)
    y_int = yt.astype(int)

    def summary(d: np.ndarray) -> dict[str, float]:
        pos, neg = y_int == 1, y_int == 0
        return {"accuracy": float(np.mean(d == y_int)),
                "tpr": float(d[pos].mean()) if pos.any() else float("nan"),
                "fpr": float(d[neg].mean()) if neg.any() else float("nan"),
                "equalized_odds_difference": float(equalized_odds_difference(y_int, d, sensitive_features=gt)),
                "demographic_parity_difference": float(demographic_parity_difference(y_int, d, sensitive_features=gt))}

    effect = pd.DataFrame({"before": summary(before), "after": summary(after)})
    effect.index.name = "metric"
    return after, effect
