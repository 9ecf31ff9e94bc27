"""Percentile-bootstrap confidence intervals for metrics.

Resampling is stratified by outcome by default: each resample keeps the number of samples of every class, so a
ranking metric stays defined and the prevalence is fixed (its interval collapses to the point value). Resamples in
which a metric is undefined (``nan``) are skipped and counted; the interval is the percentile interval over the rest.

Example
-------
>>> from healthfusion.evaluation.metrics import auroc
>>> ci = bootstrap_ci(auroc, [0, 0, 1, 1, 0, 1], [0.2, 0.4, 0.7, 0.9, 0.1, 0.3], n_boot=200, seed=0)
>>> ci.n, ci.n_boot, ci.n_skipped
(6, 200, 0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from healthfusion.evaluation.metrics import (
    BINARY_METRICS,
    binary_metrics,
    binary_metrics_batch,
    check_binary_input,
)

logger = logging.getLogger(__name__)

ArrayLike = Any

_MAX_STRATA = 50
_CHUNK_ELEMENTS = 2_000_000  # resampled indices held in memory at once (n_boot is processed in chunks)

CI_COLUMNS: tuple[str, ...] = ("metric", "value", "ci_low", "ci_high", "n", "n_skipped")


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with its percentile-bootstrap interval.

    ``n`` is the sample size, ``n_boot`` the number of resamples drawn and ``n_skipped`` how many of them were left
    out because the metric was undefined there. ``ci_low``/``ci_high`` are ``nan`` when every resample was skipped.
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    n_boot: int
    n_skipped: int
    alpha: float


def _check_boot_args(n_boot: int, alpha: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"Expected n_boot to be a positive integer, got {n_boot!r}.")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"Expected alpha in (0, 1) (0.05 gives a 95% interval), got {alpha!r}.")


def _strata(y_true: np.ndarray, stratified: bool) -> list[np.ndarray]:
    n = y_true.shape[0]
    if not stratified:
        return [np.arange(n)]
    if y_true.ndim == 1:
        _, inverse = np.unique(y_true, return_inverse=True)
    else:
        _, inverse = np.unique(y_true.reshape(n, -1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_strata = int(inverse.max()) + 1 if n else 0
    if n_strata > _MAX_STRATA:
        raise ValueError(
            f"stratified=True resamples within each distinct value of y_true, expected class labels, got "
            f"{n_strata} distinct values; pass stratified=False for a continuous outcome."
        )
    return [np.flatnonzero(inverse == s) for s in range(n_strata)]


def resample_indices(
    y_true: ArrayLike, n_boot: int = 1000, seed: int = 0, stratified: bool = True
) -> Iterator[np.ndarray]:
    """Yield bootstrap row indices in chunks of shape ``[b, n]`` (``b <= n_boot``, ``n_boot`` rows in all).

    With ``stratified=True`` every resample draws, with replacement, as many rows of each distinct ``y_true`` value
    (row pattern, for a 2-D ``y_true``) as the original has. The sequence depends only on ``y_true``'s strata,
    ``n_boot``, ``seed`` and ``stratified``, so two models scored on the same ``y_true`` get the same (paired)
    resamples.

    Raises:
        ValueError: ``n_boot < 1``, empty ``y_true``, or more than 50 strata with ``stratified=True``.
    """
    _check_boot_args(n_boot, 0.05)
    y = np.asarray(y_true)
    if y.ndim == 0 or y.shape[0] == 0:
        raise ValueError(f"Expected a non-empty y_true to resample, got shape {y.shape}.")
    n = y.shape[0]
    strata = _strata(y, stratified)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_ELEMENTS // n))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        parts = [members[rng.integers(0, members.size, size=(b, members.size))] for members in strata]
        yield np.concatenate(parts, axis=1)
        done += b


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float, int]:
    valid = values[~np.isnan(values)]
    n_skipped = int(values.size - valid.size)
    if valid.size == 0:
        return float("nan"), float("nan"), n_skipped
    low, high = np.quantile(valid, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high), n_skipped


def _log_skipped(what: str, n_skipped: int, n_boot: int) -> None:
    if n_skipped:
        logger.warning(
            "%s: %d of %d bootstrap resamples skipped because the metric was undefined there.",
            what, n_skipped, n_boot,
        )


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: ArrayLike,
    y_score: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stratified: bool = True,
) -> BootstrapCI:
    """Percentile-bootstrap interval of ``metric_fn(y_true, y_score)``.

    Args:
        metric_fn: ``f(y_true, y_score) -> float`` returning ``nan`` where undefined (the functions in
            :mod:`healthfusion.evaluation.metrics` do). A function that raises instead (e.g. scikit-learn's
            ``roc_auc_score`` on a single-class resample) stops the bootstrap: use ``stratified=True`` or a
            nan-returning metric.
        y_true: ``[n, ...]`` outcomes; rows are resampled.
        y_score: ``[n, ...]`` predictions, resampled with the same rows.
        n_boot: number of resamples (default 1000).
        alpha: ``1 - alpha`` is the coverage of the interval (default 0.05 -> 95%).
        seed: seed of the resampling; the same seed gives the same interval.
        stratified: resample within each class (see :func:`resample_indices`); use ``False`` for regression.

    Returns:
        :class:`BootstrapCI`; ``value`` is the metric on the full data.

    Raises:
        ValueError: different numbers of rows, ``n_boot < 1``, ``alpha`` outside (0, 1), or too many strata.
    """
    _check_boot_args(n_boot, alpha)
    y = np.asarray(y_true)
    s = np.asarray(y_score)
    if y.ndim == 0 or s.ndim == 0 or y.shape[0] != s.shape[0]:
        raise ValueError(
            f"Expected y_true and y_score with the same number of rows, got shapes {y.shape} and {s.shape}."
        )
    value = float(metric_fn(y, s))
    boot = np.empty(n_boot, dtype=np.float64)
    i = 0
    for chunk in resample_indices(y, n_boot, seed, stratified):
        for idx in chunk:
            boot[i] = metric_fn(y[idx], s[idx])
            i += 1
    low, high, n_skipped = _percentile_interval(boot, alpha)
    _log_skipped(getattr(metric_fn, "__name__", "metric"), n_skipped, n_boot)
    return BootstrapCI(value, low, high, int(y.shape[0]), int(n_boot), n_skipped, float(alpha))


def metrics_with_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> pd.DataFrame:
    """All :func:`~healthfusion.evaluation.metrics.binary_metrics` with percentile-bootstrap intervals.

    All metrics share the same resamples, computed in vectorised chunks.

    Returns:
        DataFrame with one row per metric in :data:`~healthfusion.evaluation.metrics.BINARY_METRICS` order and
        columns ``metric``, ``value``, ``ci_low``, ``ci_high``, ``n`` (sample size) and ``n_skipped`` (resamples
        where the metric was undefined). Under stratified resampling the ``prevalence`` interval is the point value.

    Raises:
        ValueError: bad input (see ``binary_metrics``), ``n_boot < 1`` or ``alpha`` outside (0, 1).
    """
    y, p = check_binary_input(y_true, y_prob)
    _check_boot_args(n_boot, alpha)
    point = binary_metrics(y, p, threshold)
    boot: dict[str, list[np.ndarray]] = {name: [] for name in BINARY_METRICS}
    for idx in resample_indices(y, n_boot, seed, stratified):
        batch = binary_metrics_batch(y[idx], p[idx], point["threshold"])
        for name in BINARY_METRICS:
            boot[name].append(batch[name])
    rows = []
    for name in BINARY_METRICS:
        low, high, n_skipped = _percentile_interval(np.concatenate(boot[name]), alpha)
        _log_skipped(name, n_skipped, n_boot)
        rows.append((name, point[name], low, high, point["n"], n_skipped))
    return pd.DataFrame(rows, columns=list(CI_COLUMNS))


def seed_interval(values, alpha: float = 0.05, bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """Mean and two-sided Student-t ``1 - alpha`` interval over per-seed values (non-finite values ignored; NaN
    interval for fewer than two). ``bounds`` clips the interval to a metric's range (e.g. ``(0, 1)`` for AUROC or
    accuracy), where few seeds would otherwise give limits no value can reach."""
    from scipy import stats

    v = np.asarray([x for x in np.asarray(values, dtype=float).ravel() if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high



def paired_difference_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    y_prob_ref: ArrayLike,
    metrics: tuple[str, ...] = ("auroc", "auprc"),
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired percentile-bootstrap intervals of ``metric(model) - metric(reference)`` on the same stays.

    Both models are scored on every resample of the same rows (stratified by outcome), so the interval of the
    difference accounts for the correlation between them (narrower than comparing two separate intervals).

    Returns:
        DataFrame with one row per metric and columns ``metric``, ``value`` (the difference on all rows),
        ``ci_low``, ``ci_high``, ``n``, ``n_skipped``.

    Raises:
        ValueError: bad input (see ``binary_metrics``), probabilities of different lengths, an unknown metric.
    """
    y, p = check_binary_input(y_true, y_prob)
    _, q = check_binary_input(y_true, y_prob_ref)
    unknown = [m for m in metrics if m not in BINARY_METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; expected some of {', '.join(BINARY_METRICS)}.")
    _check_boot_args(n_boot, alpha)
    a, b = binary_metrics(y, p), binary_metrics(y, q)
    boot: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for idx in resample_indices(y, n_boot, seed, stratified=True):
        da, db = binary_metrics_batch(y[idx], p[idx]), binary_metrics_batch(y[idx], q[idx])
        for m in metrics:
            boot[m].append(np.asarray(da[m], dtype=float) - np.asarray(db[m], dtype=float))
    rows = []
    for m in metrics:
        low, high, n_skipped = _percentile_interval(np.concatenate(boot[m]), alpha)
        rows.append((m, float(a[m]) - float(b[m]), low, high, int(y.size), n_skipped))
    return pd.DataFrame(rows, columns=list(CI_COLUMNS))
