"""Side-by-side comparison of binary risk models, with bootstrap intervals, and risk grouping.

Example
-------
>>> results = {"lr": ([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.6]), "rf": ([0, 1, 0, 1], [0.5, 0.6, 0.1, 0.9])}
>>> table = comparison_table(results, n_boot=100)
>>> list(table.index), int(table.loc["lr", "n"])
(['lr', 'rf'], 4)
>>> format_ci(0.8734, 0.8512, 0.8941)
'0.873 (0.851-0.894)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from healthfusion.evaluation.bootstrap import metrics_with_ci, paired_difference_ci
from healthfusion.evaluation.calibration import CALIBRATION_METRICS, calibration_with_ci
from healthfusion.evaluation.metrics import _check_prob, _check_threshold

ArrayLike = Any

COMPARISON_METRICS: tuple[str, ...] = ("auroc", "auprc", *CALIBRATION_METRICS, "accuracy", "precision", "recall",
                                       "f1", "brier")
"""Metrics reported by :func:`comparison_table`, in column order: calibration (ECE with 10 equal-width bins,
calibration slope, 1 is ideal, and calibration-in-the-large intercept, 0 is ideal) beside AUROC and AUPRC."""
DIFFERENCE_METRICS: tuple[str, ...] = ("auroc", "auprc")
"""Metrics whose paired difference against the best baseline :func:`difference_table` reports."""


def _check_results(results: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> None:
    if not isinstance(results, Mapping) or len(results) == 0:
        raise ValueError(
            f"Expected a non-empty dict {{model_name: (y_true, y_prob)}}, got {type(results).__name__} "
            f"of length {len(results) if hasattr(results, '__len__') else 'unknown'}."
        )
    for name, pair in results.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"Expected results[{name!r}] to be a (y_true, y_prob) pair, got {type(pair).__name__}.")


def _threshold_for(threshold: float | Mapping[str, float], name: str) -> float:
    if isinstance(threshold, Mapping):
        if name not in threshold:
            raise ValueError(
                f"No threshold for model {name!r}; the threshold mapping has {sorted(threshold)}. "
                f"Give one per model or a single float."
            )
        return float(threshold[name])
    return float(threshold)


def comparison_table(
    results: Mapping[str, tuple[ArrayLike, ArrayLike]],
    threshold: float | Mapping[str, float] = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per model with each metric's value and percentile-bootstrap interval.

    Args:
        results: ``{model_name: (y_true [n], y_prob [n])}``; models may be scored on different samples.
        threshold: one threshold for all models, or ``{model_name: threshold}`` (e.g. from
            :func:`~healthfusion.evaluation.metrics.choose_threshold` on validation data).
        n_boot, seed, alpha: as in :func:`~healthfusion.evaluation.bootstrap.metrics_with_ci`. Models sharing the
            same ``y_true`` get the same resamples (a paired bootstrap).

    Returns:
        DataFrame indexed by model name (index name ``"model"``) with columns ``n``, ``n_positive``,
        ``threshold`` and, for each metric in :data:`COMPARISON_METRICS`, ``<metric>``, ``<metric>_ci_low`` and
        ``<metric>_ci_high``.

    Raises:
        ValueError: empty ``results``, a malformed entry, a missing per-model threshold, or bad input for a model
            (the message names the model).
    """
    _check_results(results)
    rows = []
    for name, (y_true, y_prob) in results.items():
        t = _threshold_for(threshold, name)
        try:
            ci = metrics_with_ci(y_true, y_prob, threshold=t, n_boot=n_boot, seed=seed, alpha=alpha)
            cal = calibration_with_ci(y_true, y_prob, n_boot=n_boot, seed=seed, alpha=alpha)
        except ValueError as err:
            raise ValueError(f"Model {name!r}: {err}") from err
        ci = pd.concat([ci, cal], ignore_index=True).set_index("metric")
        row: dict[str, Any] = {
            "model": name,
            "n": int(ci.loc["auroc", "n"]),
            "n_positive": int(np.asarray(y_true, dtype=np.float64).sum()),
            "threshold": t,
        }
        for metric in COMPARISON_METRICS:
            row[metric] = ci.loc[metric, "value"]
            row[f"{metric}_ci_low"] = ci.loc[metric, "ci_low"]
            row[f"{metric}_ci_high"] = ci.loc[metric, "ci_high"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def difference_table(
    frame: pd.DataFrame,
    models: list[str],
    reference: str,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Paired bootstrap intervals of each model's AUROC and AUPRC minus ``reference``'s, on the stays both scored.

    Args:
        frame: one row per stay with ``y_true`` and one probability column per model (NaN: not scored).
        models: columns to compare (``reference`` itself is skipped).
        reference: the comparator column (e.g. the best baseline by AUROC).

    Returns:
        DataFrame indexed by model (index name ``"model"``) with ``reference``, ``n`` and, per metric in
        :data:`DIFFERENCE_METRICS`, ``<metric>_diff``, ``<metric>_diff_ci_low``, ``<metric>_diff_ci_high``.

    Raises:
        ValueError: a column missing from ``frame``, or bad input for a model (named).
    """
    missing = [c for c in [*models, reference, "y_true"] if c not in frame.columns]
    if missing:
        raise ValueError(f"difference_table: columns {missing} are not in the predictions (have {list(frame.columns)}).")
    rows = []
    for name in models:
        if name == reference:
            continue
        both = frame[frame[name].notna() & frame[reference].notna()]
        try:
            ci = paired_difference_ci(both["y_true"].to_numpy(dtype=float), both[name].to_numpy(dtype=float),
                                      both[reference].to_numpy(dtype=float), DIFFERENCE_METRICS, n_boot, seed, alpha)
        except ValueError as err:
            raise ValueError(f"Model {name!r} vs {reference!r}: {err}") from err
        row: dict[str, Any] = {"model": name, "reference": reference, "n": int(len(both))}
        for _, r in ci.iterrows():
            row[f"{r['metric']}_diff"] = r["value"]
            row[f"{r['metric']}_diff_ci_low"] = r["ci_low"]
            row[f"{r['metric']}_diff_ci_high"] = r["ci_high"]
        rows.append(row)
    columns = ["model", "reference", "n", *[f"{m}_diff{s}" for m in DIFFERENCE_METRICS for s in ("", "_ci_low",
                                                                                                   "_ci_high")]]
    return pd.DataFrame(rows, columns=columns).set_index("model")


def format_ci(value: float, ci_low: float, ci_high: float, digits: int = 3) -> str:
    """Format a value and its interval as ``"0.873 (0.851-0.894)"``.

    ``"n/a"`` stands for an undefined value or interval; when the interval has a negative bound it is written
    ``"(-0.120 to 0.050)"`` so the minus sign is not mistaken for the separator.
    """
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    if ci_low is None or ci_high is None or math.isnan(ci_low) or math.isnan(ci_high):
        return f"{text} (n/a)"
    sep = " to " if min(ci_low, ci_high) < 0 else "-"
    return f"{text} ({ci_low:.{digits}f}{sep}{ci_high:.{digits}f})"


def format_comparison(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Turn a :func:`comparison_table` into strings: one column per metric, ``"value (low-high)"``, plus ``n``.

    Raises:
        ValueError: ``table`` lacks a metric's value or interval columns.
    """
    metrics = [m for m in COMPARISON_METRICS if m in table.columns]
    missing = [c for m in metrics for c in (f"{m}_ci_low", f"{m}_ci_high") if c not in table.columns]
    if not metrics or missing or "n" not in table.columns:
        raise ValueError(
            f"Expected a comparison_table() result with 'n' and <metric>, <metric>_ci_low, <metric>_ci_high "
            f"columns, got columns {list(table.columns)}."
        )
    out = pd.DataFrame(index=table.index)
    out["n"] = table["n"].astype(int)
    for m in metrics:
        out[m] = [
            format_ci(v, lo, hi, digits)
            for v, lo, hi in zip(table[m], table[f"{m}_ci_low"], table[f"{m}_ci_high"], strict=True)
        ]
    return out


def risk_groups(y_prob: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Label each sample ``"high"`` (``y_prob >= threshold``) or ``"low"`` risk.

    Args:
        y_prob: ``[n]`` probabilities in [0, 1].
        threshold: in [0, 1].

    Returns:
        ``[n]`` array of str (``dtype "<U4"``).

    Raises:
        ValueError: non-1-D input, NaN, probabilities or threshold outside [0, 1].
    """
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"Expected y_prob to be a 1-D array, got shape {p.shape}.")
    if np.isnan(p).any():
        raise ValueError(f"Expected y_prob without NaN, got {int(np.isnan(p).sum())} NaN value(s).")
    _check_prob(p, "y_prob")
    t = _check_threshold(threshold)
    return np.where(p >= t, "high", "low")
