"""The validation metrics the trainer logs each epoch and early stopping can monitor.

These are training-time signals only (no confidence intervals, no ``n``); reported metrics live in
``healthfusion.evaluation``.

=============  ====================  ====================================================================
head kind      metric name           value (higher is better)
=============  ====================  ====================================================================
``binary``     ``val_auroc``         ROC AUC over samples with a target
``multiclass`` ``val_accuracy``      accuracy of the arg-max class over samples with a target
``multilabel`` ``val_macro_auroc``   mean ROC AUC over labels that have both classes among valid targets
``regression`` ``val_neg_mse``       minus the mean squared error over valid targets
(any)          ``val_loss``          the training objective on the validation set (lower is better)
=============  ====================  ====================================================================

A metric that cannot be computed (e.g. a validation set with a single class) is NaN; early stopping treats NaN
as "no improvement".
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from healthfusion.training.objectives import check_head_kind

HEAD_METRIC: dict[str, str] = {
    "binary": "val_auroc",
    "multiclass": "val_accuracy",
    "multilabel": "val_macro_auroc",
    "regression": "val_neg_mse",
}
MONITOR_NAMES: tuple[str, ...] = ("val_loss", *HEAD_METRIC.values())


def monitor_mode(name: str) -> str:
    """``"min"`` for ``val_loss`` and ``train_loss``, ``"max"`` for the head metrics."""
    return "min" if name.endswith("loss") else "max"


def resolve_monitor(monitor: str | None, kind: str) -> str:
    """The metric name to monitor for a ``kind`` head: ``monitor`` itself, or the head's metric if None.

    Raises
    ------
    ValueError
        If ``monitor`` is a metric of a different head kind or unknown.
    """
    check_head_kind(kind)
    if monitor is None:
        return HEAD_METRIC[kind]
    if monitor not in ("val_loss", HEAD_METRIC[kind]):
        raise ValueError(
            f"monitor={monitor!r} is not logged for a {kind} head; use 'val_loss' or {HEAD_METRIC[kind]!r} "
            "(or None for the default)."
        )
    return monitor


def _valid(y: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return ~np.isnan(y) & (y >= 0)


def head_metric(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The head kind's validation metric (see module table), ignoring missing targets.

    Parameters
    ----------
    kind : {"binary", "multiclass", "multilabel", "regression"}
    y_true : ndarray
        [n] (binary, multiclass, regression) or [n, K] (multilabel, multi-output regression); NaN / -1 = missing.
    y_pred : ndarray
        Output of the head as :meth:`Trainer.predict` returns it: probabilities [n] / [n, K] or values.

    Returns
    -------
    float
        NaN when it cannot be computed (no valid target, or a single class for AUROC).
    """
    check_head_kind(kind)
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if kind == "regression":
        valid = ~np.isnan(y_true)
        return float(-np.mean((y_pred[valid] - y_true[valid]) ** 2)) if valid.any() else float("nan")
    valid = _valid(y_true)
    if kind == "multiclass":
        if not valid.any():
            return float("nan")
        return float(np.mean(np.argmax(y_pred[valid], axis=1) == y_true[valid]))
    if kind == "binary":
        return _auroc(y_true[valid], y_pred[valid])
    aucs = [_auroc(y_true[valid[:, k], k], y_pred[valid[:, k], k]) for k in range(y_true.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    if y.size == 0 or np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, p))
