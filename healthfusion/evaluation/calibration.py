"""Calibration of binary risk models: reliability curve, ECE, Brier, calibration slope and intercept. (The post-hoc
calibrators a model folder saves, fitted on validation predictions only, are in
:mod:`healthfusion.models.calibration`.)

Definitions
-----------
* Reliability curve: stays binned by predicted probability; per bin the mean prediction and the observed rate.
* ECE (expected calibration error): ``sum_b n_b / n * |observed_b - mean_predicted_b|`` over non-empty bins.
* Calibration slope: the coefficient ``b`` of the logistic fit ``logit P(y=1) = a + b * logit(p)``; 1 is ideal,
  below 1 means predictions are too extreme (overfitting).
* Calibration intercept (calibration-in-the-large): ``a`` in ``logit P(y=1) = a + logit(p)`` (slope fixed at 1);
  0 is ideal, above 0 means risks are underestimated on average.

Example
-------
>>> y, p = [0, 0, 1, 1, 0, 1], [0.1, 0.3, 0.8, 0.7, 0.2, 0.6]
>>> round(expected_calibration_error(y, p, n_bins=5), 3)
0.25
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from healthfusion.evaluation.bootstrap import _percentile_interval, bootstrap_ci, resample_indices
from healthfusion.evaluation.metrics import check_binary_input

ArrayLike = Any
_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _bins(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.percentile(p, np.linspace(0, 100, n_bins + 1))
    raise ValueError(f"Unknown binning strategy {strategy!r}; expected 'uniform' or 'quantile'.")


def reliability_curve(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Reliability table: one row per non-empty bin with ``bin_low``, ``bin_high``, ``mean_predicted``,
    ``observed`` (event rate) and ``n``. Bins as in :func:`sklearn.calibration.calibration_curve`.

    Raises
    ------
    ValueError
        Bad input (see :func:`~healthfusion.evaluation.metrics.check_binary_input`), ``n_bins < 1`` or an unknown
        ``strategy`` ("uniform" or "quantile").
    """
    y, p = check_binary_input(y_true, y_prob)
    edges = _bins(p, n_bins, strategy)
    ids = np.searchsorted(edges[1:-1], p, side="right")
    n = np.bincount(ids, minlength=len(edges) - 1)
    sum_p = np.bincount(ids, weights=p, minlength=len(edges) - 1)
    sum_y = np.bincount(ids, weights=y, minlength=len(edges) - 1)
    ok = n > 0
    return pd.DataFrame({"bin_low": edges[:-1][ok], "bin_high": edges[1:][ok], "mean_predicted": sum_p[ok] / n[ok],
                         "observed": sum_y[ok] / n[ok], "n": n[ok].astype(int)})


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10,
                               strategy: str = "uniform") -> float:
    """ECE over ``n_bins`` bins (weighted mean absolute gap between observed rate and mean prediction)."""
    return ece_from_curve(reliability_curve(y_true, y_prob, n_bins, strategy))


def ece_from_curve(table: pd.DataFrame) -> float:
    """ECE of a :func:`reliability_curve` table (for callers that also draw the curve)."""
    return float((table["n"] * (table["observed"] - table["mean_predicted"]).abs()).sum() / table["n"].sum())


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared difference between outcome and predicted probability."""
    y, p = check_binary_input(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def _newton_logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray, n_iter: int = 50) -> np.ndarray:
    """Unpenalised logistic regression ``logit P = x @ beta + offset`` by Newton-Raphson (x includes intercept)."""
    beta = np.zeros(x.shape[1])
    for _ in range(n_iter):
        eta = x @ beta + offset
        mu = expit(eta)
        w = np.maximum(mu * (1 - mu), 1e-12)
        grad = x.T @ (y - mu)
        hess = x.T @ (x * w[:, None])
        step = np.linalg.solve(hess + 1e-10 * np.eye(x.shape[1]), grad)
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def calibration_slope_intercept(y_true: ArrayLike, y_prob: ArrayLike) -> dict[str, float]:
    """``{"slope", "intercept"}``: the logistic recalibration slope and the calibration-in-the-large intercept
    (see the module docstring). ``nan`` when ``y_true`` has one class.

    Raises
    ------
    ValueError
        Bad input (see :func:`~healthfusion.evaluation.metrics.check_binary_input`).
    """
    return {"slope": _calibration_slope(y_true, y_prob), "intercept": _calibration_intercept(y_true, y_prob)}


def _calibration_slope(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    y, p = check_binary_input(y_true, y_prob)
    if y.min() == y.max():
        return float("nan")
    return float(_newton_logistic(np.column_stack([np.ones(y.size), _logit(p)]), y, np.zeros(y.size))[1])


def _calibration_intercept(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    y, p = check_binary_input(y_true, y_prob)
    if y.min() == y.max():
        return float("nan")
    return float(_newton_logistic(np.ones((y.size, 1)), y, _logit(p))[0])


def calibration_summary(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, n_boot: int = 1000,
                        seed: int = 0) -> pd.DataFrame:
    """ECE, Brier, slope and intercept with percentile-bootstrap 95% intervals: columns ``metric``, ``value``,
    ``ci_low``, ``ci_high``, ``n``."""

    def ece(y, p):
        return expected_calibration_error(y, p, n_bins)

    rows = []
    for name, fn in (("ece", ece), ("brier", brier_score), ("slope", _calibration_slope),
                     ("intercept", _calibration_intercept)):
        ci = bootstrap_ci(fn, y_true, y_prob, n_boot=n_boot, seed=seed)
        rows.append({"metric": name, "value": ci.value, "ci_low": ci.ci_low, "ci_high": ci.ci_high, "n": ci.n})
    return pd.DataFrame(rows)


CALIBRATION_METRICS: tuple[str, ...] = ("ece", "cal_slope", "cal_intercept")


def calibration_metrics_batch(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = 10, n_iter: int = 50,
                              start: tuple[float, float, float] | None = None) -> dict[str, np.ndarray]:
    """ECE (``n_bins`` equal-width bins), calibration slope and intercept of each row of ``[b, n]`` arrays at once
    (bootstrap resamples): ``{"ece", "cal_slope", "cal_intercept"}`` -> ``[b]``; NaN for a single-class row or
    a fit that does not converge. The same values as :func:`expected_calibration_error` and
    :func:`calibration_slope_intercept` on each row. ``start`` (logistic intercept, slope, calibration-in-the-large
    intercept) starts the Newton iterations near the answer, e.g. at the full data's values for its resamples."""
    y, p = np.atleast_2d(np.asarray(y_true, dtype=float)), np.atleast_2d(np.asarray(y_prob, dtype=float))
    b, n = p.shape
    ids = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p, side="right") + n_bins * np.arange(b)[:, None]
    sum_p = np.bincount(ids.ravel(), weights=p.ravel(), minlength=b * n_bins).reshape(b, n_bins)
    sum_y = np.bincount(ids.ravel(), weights=y.ravel(), minlength=b * n_bins).reshape(b, n_bins)
    ece = np.abs(sum_y - sum_p).sum(axis=1) / n
    z = _logit(p)
    a0, b0, c0 = start if start is not None and np.isfinite(start).all() else (0.0, 0.0, 0.0)
    slope, intercept = np.tile([a0, b0], (b, 1)), np.full(b, c0)
    for _ in range(n_iter):
        mu = expit(slope[:, :1] + slope[:, 1:] * z)
        w, r = np.maximum(mu * (1 - mu), 1e-12), y - mu
        g0, g1 = r.sum(axis=1), (r * z).sum(axis=1)
        h00, h01, h11 = w.sum(axis=1), (w * z).sum(axis=1), (w * z * z).sum(axis=1)
        det = h00 * h11 - h01**2 + 1e-10
        step = np.column_stack([(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det])
        slope += step
        mu1 = expit(intercept[:, None] + z)
        step1 = (y - mu1).sum(axis=1) / np.maximum((mu1 * (1 - mu1)).sum(axis=1), 1e-12)
        intercept += step1
        if max(np.abs(step).max(), np.abs(step1).max()) < 1e-9:
            break
    one_class = (y.min(axis=1) == y.max(axis=1)) | ~np.isfinite(slope).all(axis=1)
    return {"ece": ece, "cal_slope": np.where(one_class, np.nan, slope[:, 1]),
            "cal_intercept": np.where(one_class | ~np.isfinite(intercept), np.nan, intercept),
            "_start": np.column_stack([slope, intercept])}


def calibration_with_ci(y_true: ArrayLike, y_prob: ArrayLike, n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> pd.DataFrame:
    """:data:`CALIBRATION_METRICS` with percentile-bootstrap intervals over the same stratified resamples as
    :func:`~healthfusion.evaluation.bootstrap.metrics_with_ci` (same ``seed``): columns ``metric``, ``value``,
    ``ci_low``, ``ci_high``, ``n``, ``n_skipped``.

    Raises
    ------
    ValueError
        Bad input (see :func:`~healthfusion.evaluation.metrics.check_binary_input`).
    """
    y, p = check_binary_input(y_true, y_prob)
    point = calibration_metrics_batch(y, p)
    start = tuple(float(v) for v in point.pop("_start")[0])
    boot: dict[str, list[np.ndarray]] = {m: [] for m in CALIBRATION_METRICS}
    for idx in resample_indices(y, n_boot, seed, stratified=True):
        batch = calibration_metrics_batch(y[idx], p[idx], start=start)
        for m in CALIBRATION_METRICS:
            boot[m].append(batch[m])
    rows = []
    for m in CALIBRATION_METRICS:
        low, high, n_skipped = _percentile_interval(np.concatenate(boot[m]), alpha)
        rows.append((m, float(point[m][0]), low, high, int(y.size), n_skipped))
    return pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high", "n", "n_skipped"])

