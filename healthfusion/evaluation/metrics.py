"""Pure metric functions for risk models: binary, multiclass, multilabel and regression.

Every function validates its input and raises :class:`ValueError` saying what was expected and what was got.
Nothing here fits anything or keeps state; all functions are tested against scikit-learn as the reference.

Conventions
-----------
* A sample is predicted positive when ``y_prob >= threshold``.
* Ranking metrics (``auroc``, ``auprc``) are ``nan`` when only one class is present; a warning is logged.
* Ratio metrics whose denominator is zero are ``nan`` (``precision`` with no predicted positive, ``recall`` with
  no positive, ``specificity`` with no negative, ``f1`` with no positive and no predicted positive), matching
  scikit-learn's ``zero_division=np.nan``.

Example
-------
>>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
>>> round(m["auroc"], 2), m["n"], m["n_positive"]
(0.75, 4, 2)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ArrayLike = Any

BINARY_METRICS: tuple[str, ...] = (
    "auroc",
    "auprc",
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "brier",
    "prevalence",
)
"""Names of the rate metrics :func:`binary_metrics` returns (besides the counts ``n`` and ``n_positive``)."""

THRESHOLD_RULES: tuple[str, ...] = ("youden", "sensitivity", "f1", "se_ppv")


# --------------------------------------------------------------------------------------------------- validation
def _as_float_array(x: ArrayLike, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"Expected {name} to be numeric, got values of type {np.asarray(x).dtype}; "
            f"convert it to numbers first."
        ) from err
    return arr


def _check_no_nan(arr: np.ndarray, name: str) -> None:
    n_nan = int(np.isnan(arr).sum())
    if n_nan:
        raise ValueError(
            f"Expected {name} without NaN, got {n_nan} NaN value(s) out of {arr.size}; "
            f"drop or impute the missing entries before computing metrics."
        )


def _check_labels01(y: np.ndarray, name: str) -> None:
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        shown = np.unique(y[bad])[:5].tolist()
        raise ValueError(
            f"Expected {name} to contain only 0 and 1, got other value(s) {shown}; "
            f"encode the positive class as 1 and the negative class as 0."
        )


def _check_prob(p: np.ndarray, name: str) -> None:
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(
            f"Expected {name} to be probabilities in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]; "
            f"pass probabilities (e.g. apply a sigmoid or softmax to logits), not raw scores."
        )


def check_binary_input(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate binary labels and probabilities; return both as ``[n]`` float64 arrays.

    Raises:
        ValueError: non-numeric, non-1-D or empty input, different lengths, NaN, labels other than 0/1 or
            probabilities outside [0, 1]; the message says what was expected, what was got and the fix.
    """
    y = _as_float_array(y_true, "y_true")
    p = _as_float_array(y_prob, "y_prob")
    for arr, name in ((y, "y_true"), (p, "y_prob")):
        if arr.ndim != 1:
            raise ValueError(
                f"Expected {name} to be a 1-D array, got shape {arr.shape}; "
                f"pass the positive-class column only (e.g. y_prob[:, 1] or .ravel())."
            )
    if y.shape[0] != p.shape[0]:
        raise ValueError(
            f"Expected y_true and y_prob of the same length, got {y.shape[0]} and {p.shape[0]}."
        )
    if y.shape[0] == 0:
        raise ValueError("Expected at least one sample, got empty y_true and y_prob.")
    _check_no_nan(y, "y_true")
    _check_no_nan(p, "y_prob")
    _check_labels01(y, "y_true")
    _check_prob(p, "y_prob")
    return y, p


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"Expected threshold in [0, 1], got {threshold!r}.")
    return t


def _check_2d(arr: np.ndarray, name: str) -> None:
    if arr.ndim != 2:
        raise ValueError(f"Expected {name} to be a 2-D array [n_samples, n_columns], got shape {arr.shape}.")


# ------------------------------------------------------------------------------------------- batched binary core
def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _ranking_metrics(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision for each row of ``y``/``p`` ([B, n]), ``nan`` where one class is absent.

    Ties are handled as scikit-learn does: all samples sharing a score form one operating point, so ROC ties are
    trapezoids (0.5 credit) and average precision is ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds.
    """
    order = np.argsort(-p, axis=1, kind="stable")
    p_sorted = np.take_along_axis(p, order, axis=1)
    y_sorted = np.take_along_axis(y, order, axis=1)
    tp = np.cumsum(y_sorted, axis=1)
    fp = np.cumsum(1.0 - y_sorted, axis=1)
    n_pos = tp[:, -1:]
    n_neg = fp[:, -1:]
    # an operating point sits at the last sample of each group of tied scores
    is_point = np.ones_like(p_sorted, dtype=bool)
    is_point[:, :-1] = p_sorted[:, 1:] != p_sorted[:, :-1]
    tp_at = np.where(is_point, tp, 0.0)
    fp_at = np.where(is_point, fp, 0.0)
    # counts at the previous operating point (cumulative counts never decrease)
    tp_prev = np.zeros_like(tp)
    fp_prev = np.zeros_like(fp)
    tp_prev[:, 1:] = np.maximum.accumulate(tp_at, axis=1)[:, :-1]
    fp_prev[:, 1:] = np.maximum.accumulate(fp_at, axis=1)[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        roc_area = np.where(is_point, (fp - fp_prev) * (tp + tp_prev) / 2.0, 0.0).sum(axis=1)
        auroc = roc_area / (n_pos[:, 0] * n_neg[:, 0])
        ap_terms = np.where(is_point, (tp - tp_prev) * tp / (tp + fp), 0.0).sum(axis=1)
        auprc = ap_terms / n_pos[:, 0]
    undefined = (n_pos[:, 0] == 0) | (n_neg[:, 0] == 0)
    auroc[undefined] = np.nan
    auprc[undefined] = np.nan
    return auroc, auprc


def binary_metrics_batch(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Binary metrics for ``B`` resamples at once: ``y_true`` and ``y_prob`` are ``[B, n]`` arrays.

    This is the one implementation behind :func:`binary_metrics` (called with ``B = 1``) and the bootstrap. Inputs
    are assumed valid (0/1 labels, probabilities in [0, 1]); use :func:`binary_metrics` for checked input.

    Returns a dict mapping each name in :data:`BINARY_METRICS` to a float ``[B]`` array (``nan`` where undefined)
    plus ``"n"`` and ``"n_positive"``.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    _check_2d(y, "y_true")
    if y.shape != p.shape:
        raise ValueError(f"Expected y_true and y_prob of the same shape, got {y.shape} and {p.shape}.")
    n = y.shape[1]
    pred = p >= threshold
    pos = y == 1
    tp = (pred & pos).sum(axis=1).astype(np.float64)
    fp = (pred & ~pos).sum(axis=1).astype(np.float64)
    fn = (~pred & pos).sum(axis=1).astype(np.float64)
    tn = n - tp - fp - fn
    auroc, auprc = _ranking_metrics(y, p)
    return {
        "auroc": auroc,
        "auprc": auprc,
        "accuracy": (tp + tn) / n,
        "precision": _safe_div(tp, tp + fp),
        "recall": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "f1": _safe_div(2.0 * tp, 2.0 * tp + fp + fn),
        "brier": np.mean((p - y) ** 2, axis=1),
        "prevalence": (tp + fn) / n,
        "n": np.full(y.shape[0], n, dtype=np.int64),
        "n_positive": (tp + fn).astype(np.int64),
    }


def _warn_one_class(n: int, n_positive: int, what: str) -> None:
    logger.warning(
        "%s is undefined with only one class present (n=%d, n_positive=%d); returning nan.", what, n, n_positive
    )


# ---------------------------------------------------------------------------------------------- binary, public
def auroc(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Area under the ROC curve for 0/1 ``y_true`` ([n]) and scores ``y_prob`` ([n], in [0, 1]).

    Returns ``nan`` (and logs a warning) when only one class is present. Raises ``ValueError`` on bad input.
    """
    y, p = check_binary_input(y_true, y_prob)
    value = float(_ranking_metrics(y[None, :], p[None, :])[0][0])
    if np.isnan(value):
        _warn_one_class(y.size, int(y.sum()), "AUROC")
    return value


def auprc(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision (``sklearn.metrics.average_precision_score``).

    Returns ``nan`` (and logs a warning) when only one class is present. Raises ``ValueError`` on bad input.
    """
    y, p = check_binary_input(y_true, y_prob)
    value = float(_ranking_metrics(y[None, :], p[None, :])[1][0])
    if np.isnan(value):
        _warn_one_class(y.size, int(y.sum()), "AUPRC")
    return value


def binary_metrics(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = 0.5) -> dict[str, float | int]:
    """Threshold, ranking and calibration metrics of a binary risk model.

    Args:
        y_true: ``[n]`` labels, 0 or 1 (bool or numeric).
        y_prob: ``[n]`` predicted probability of class 1, in [0, 1].
        threshold: a sample is predicted positive when ``y_prob >= threshold`` (default 0.5). Choose it on
            validation data with :func:`choose_threshold`, never on the test set.

    Returns:
        dict with ``auroc``, ``auprc`` (average precision), ``accuracy``, ``precision``, ``recall``
        (sensitivity), ``specificity``, ``f1``, ``brier``, ``prevalence`` (floats; ``nan`` where undefined, see the
        module docstring), ``n`` and ``n_positive`` (ints) and the ``threshold`` used.

    Raises:
        ValueError: length mismatch, empty or non-1-D input, NaN, labels other than 0/1, probabilities outside
            [0, 1], or a threshold outside [0, 1].
    """
    y, p = check_binary_input(y_true, y_prob)
    t = _check_threshold(threshold)
    batch = binary_metrics_batch(y[None, :], p[None, :], t)
    out: dict[str, float | int] = {name: float(batch[name][0]) for name in BINARY_METRICS}
    out["n"] = int(batch["n"][0])
    out["n_positive"] = int(batch["n_positive"][0])
    out["threshold"] = t
    if np.isnan(out["auroc"]):
        _warn_one_class(out["n"], out["n_positive"], "AUROC and AUPRC")
    return out


def choose_threshold(
    y_true: ArrayLike, y_prob: ArrayLike, rule: str = "youden", target: float | None = None
) -> float:
    """Choose an operating point on VALIDATION data; apply the returned threshold unchanged to the test set.

    Candidate thresholds are the distinct values of ``y_prob``; a sample is positive when ``y_prob >= threshold``.

    Rules:
        ``"youden"``: maximise sensitivity + specificity - 1 (Youden's J).
        ``"sensitivity"``: the highest threshold whose sensitivity is at least ``target`` (e.g. 0.9), which gives
            the best specificity under that constraint.
        ``"f1"``: maximise F1.
        ``"se_ppv"``: maximise min(sensitivity, positive predictivity), the PhysioNet Challenge 2012 event 1 score
            (:func:`healthfusion.evaluation.challenge2012.event1_score`).
    Ties go to the highest threshold.

    Raises:
        ValueError: bad input (see :func:`binary_metrics`), an unknown rule, a ``target`` missing for (or given
            with a rule other than) ``"sensitivity"``, a target outside (0, 1], or a single-class ``y_true``.

    Example:
        >>> choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.35, 0.8])
        0.35
    """
    y, p = check_binary_input(y_true, y_prob)
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"Unknown threshold rule {rule!r}; expected one of {', '.join(THRESHOLD_RULES)}.")
    if rule == "sensitivity":
        if target is None or not 0.0 < float(target) <= 1.0:
            raise ValueError(f"rule='sensitivity' needs a target sensitivity in (0, 1], got target={target!r}.")
    elif target is not None:
        raise ValueError(f"target is only used with rule='sensitivity', got rule={rule!r} and target={target!r}.")
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"Expected both classes in y_true to choose a threshold, got {int(n_pos)} positive(s) and "
            f"{int(n_neg)} negative(s); choose the threshold on a validation set that contains both."
        )
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    is_point = np.ones(p.size, dtype=bool)
    is_point[:-1] = p_sorted[1:] != p_sorted[:-1]
    thresholds = p_sorted[is_point]  # descending
    tp = np.cumsum(y_sorted)[is_point]
    fp = np.cumsum(1.0 - y_sorted)[is_point]
    sensitivity = tp / n_pos
    if rule == "youden":
        idx = int(np.argmax(sensitivity - fp / n_neg))
    elif rule == "f1":
        idx = int(np.argmax(2.0 * tp / (tp + fp + n_pos)))
    elif rule == "se_ppv":
        idx = int(np.argmax(np.minimum(sensitivity, tp / (tp + fp))))
    else:
        # sensitivity reaches 1 at the lowest threshold, so a point always qualifies; tolerate float round-off
        idx = int(np.flatnonzero(sensitivity >= float(target) - 1e-12)[0])
    chosen = float(thresholds[idx])
    logger.info(
        "choose_threshold(rule=%s): threshold=%.4g, sensitivity=%.3f, specificity=%.3f",
        rule, chosen, sensitivity[idx], 1.0 - fp[idx] / n_neg,
    )
    return chosen


# ------------------------------------------------------------------------------------------ multiclass/multilabel
def _macro_over_columns(values: np.ndarray, names: Sequence[str], what: str) -> float:
    undefined = [name for name, v in zip(names, values, strict=True) if np.isnan(v)]
    if undefined:
        logger.warning(
            "%s is undefined for %d column(s) with only one class present (%s); averaging over the rest.",
            what, len(undefined), ", ".join(undefined[:10]),
        )
    if len(undefined) == len(values):
        return float("nan")
    return float(np.nanmean(values))


def multiclass_metrics(y_true: ArrayLike, y_prob: ArrayLike) -> dict[str, float | int]:
    """Metrics of a K-class model.

    Args:
        y_true: ``[n]`` integer class indices in ``0..K-1``.
        y_prob: ``[n, K]`` class probabilities; each row sums to 1 (within 1e-3).

    Returns:
        dict with ``accuracy``, ``balanced_accuracy`` (mean per-class recall over classes present),
        ``f1_macro`` (classes with an undefined F1 are left out of the mean), ``f1_micro``, ``auroc_macro``
        (one-vs-rest, averaged over classes with both outcomes present; ``nan`` and a warning if none), ``n`` and
        ``n_classes``. The predicted class is the row's arg-max.

    Raises:
        ValueError: shape mismatch, NaN, labels outside ``0..K-1`` or non-integer, probabilities outside [0, 1]
            or rows not summing to 1.
    """
    y = _as_float_array(y_true, "y_true")
    p = _as_float_array(y_prob, "y_prob")
    if y.ndim != 1:
        raise ValueError(f"Expected y_true to be a 1-D array of class indices, got shape {y.shape}.")
    _check_2d(p, "y_prob")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"Expected y_true and y_prob with the same number of rows, got {y.shape[0]} and {p.shape[0]}.")
    if y.shape[0] == 0:
        raise ValueError("Expected at least one sample, got none.")
    n, k = p.shape
    _check_no_nan(y, "y_true")
    _check_no_nan(p, "y_prob")
    bad = (y != np.round(y)) | (y < 0) | (y >= k)
    if bad.any():
        raise ValueError(
            f"Expected y_true to hold class indices 0..{k - 1} (y_prob has {k} columns), got value(s) "
            f"{np.unique(y[bad])[:5].tolist()}."
        )
    _check_prob(p, "y_prob")
    row_sums = p.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=1e-3):
        raise ValueError(
            f"Expected each row of y_prob to sum to 1, got row sums in [{row_sums.min():.4g}, {row_sums.max():.4g}]; "
            f"apply a softmax to logits."
        )
    labels = y.astype(np.int64)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1.0
    pred = np.argmax(p, axis=1)
    pred_onehot = np.zeros((n, k), dtype=bool)
    pred_onehot[np.arange(n), pred] = True
    pos = onehot.astype(bool)
    tp = (pred_onehot & pos).sum(axis=0).astype(np.float64)
    fp = (pred_onehot & ~pos).sum(axis=0).astype(np.float64)
    fn = (~pred_onehot & pos).sum(axis=0).astype(np.float64)
    f1 = _safe_div(2.0 * tp, 2.0 * tp + fp + fn)
    recall = _safe_div(tp, tp + fn)
    auroc_k, _ = _ranking_metrics(onehot.T, p.T)
    names = [f"class {c}" for c in range(k)]
    return {
        "accuracy": float(np.mean(pred == labels)),
        "balanced_accuracy": float(np.nanmean(recall)),
        "f1_macro": float(np.nanmean(f1)) if not np.all(np.isnan(f1)) else float("nan"),
        "f1_micro": float(2.0 * tp.sum() / (2.0 * tp.sum() + fp.sum() + fn.sum())),
        "auroc_macro": _macro_over_columns(auroc_k, names, "One-vs-rest AUROC"),
        "n": int(n),
        "n_classes": int(k),
    }


def multilabel_metrics(y_true: ArrayLike, y_prob: ArrayLike, threshold: float = 0.5) -> dict[str, float | int]:
    """Metrics of a model predicting ``K`` independent binary labels.

    Args:
        y_true: ``[n, K]`` 0/1 label matrix (no missing entries).
        y_prob: ``[n, K]`` per-label probabilities in [0, 1].
        threshold: a label is predicted when ``y_prob >= threshold``.

    Returns:
        dict with ``auroc_macro`` and ``auprc_macro`` (means over labels with both outcomes present; a warning names
        the others), ``auroc_micro`` (all entries pooled), ``f1_micro``, ``f1_macro`` (labels with an undefined F1
        left out), ``n`` and ``n_labels``.

    Raises:
        ValueError: shape mismatch, NaN, labels other than 0/1, probabilities outside [0, 1].
    """
    y = _as_float_array(y_true, "y_true")
    p = _as_float_array(y_prob, "y_prob")
    _check_2d(y, "y_true")
    _check_2d(p, "y_prob")
    if y.shape != p.shape:
        raise ValueError(f"Expected y_true and y_prob of the same shape, got {y.shape} and {p.shape}.")
    if y.shape[0] == 0:
        raise ValueError("Expected at least one sample, got none.")
    _check_no_nan(y, "y_true")
    _check_no_nan(p, "y_prob")
    _check_labels01(y, "y_true")
    _check_prob(p, "y_prob")
    t = _check_threshold(threshold)
    per_label = binary_metrics_batch(y.T, p.T, t)
    names = [f"label {j}" for j in range(y.shape[1])]
    pred = p >= t
    pos = y == 1
    tp, fp, fn = (pred & pos).sum(), (pred & ~pos).sum(), (~pred & pos).sum()
    micro_auroc = float(_ranking_metrics(y.reshape(1, -1), p.reshape(1, -1))[0][0])
    f1 = per_label["f1"]
    return {
        "auroc_macro": _macro_over_columns(per_label["auroc"], names, "AUROC"),
        "auprc_macro": _macro_over_columns(per_label["auprc"], names, "AUPRC"),
        "auroc_micro": micro_auroc,
        "f1_micro": float(_safe_div(np.array(2.0 * tp), np.array(2.0 * tp + fp + fn))),
        "f1_macro": float(np.nanmean(f1)) if not np.all(np.isnan(f1)) else float("nan"),
        "n": int(y.shape[0]),
        "n_labels": int(y.shape[1]),
    }


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float | int]:
    """``mae``, ``rmse``, ``r2`` and ``n`` for ``[n]`` targets and predictions.

    ``r2`` is ``nan`` (with a warning) when ``y_true`` is constant. Raises ``ValueError`` on NaN, shape mismatch,
    empty or non-1-D input.
    """
    y = _as_float_array(y_true, "y_true")
    f = _as_float_array(y_pred, "y_pred")
    for arr, name in ((y, "y_true"), (f, "y_pred")):
        if arr.ndim != 1:
            raise ValueError(f"Expected {name} to be a 1-D array, got shape {arr.shape}.")
    if y.shape != f.shape:
        raise ValueError(f"Expected y_true and y_pred of the same length, got {y.shape[0]} and {f.shape[0]}.")
    if y.size == 0:
        raise ValueError("Expected at least one sample, got none.")
    _check_no_nan(y, "y_true")
    _check_no_nan(f, "y_pred")
    resid = y - f
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        logger.warning("R2 is undefined for a constant y_true (n=%d); returning nan.", y.size)
        r2 = float("nan")
    else:
        r2 = 1.0 - float(np.sum(resid**2)) / ss_tot
    return {
        "mae": float(np.mean(np.abs(resid))),
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "r2": r2,
        "n": int(y.size),
    }
