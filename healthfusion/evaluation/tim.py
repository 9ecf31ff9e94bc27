"""Per-task metrics of a multitask model, the task-interdependence matrix (TIM) and relative improvements.

Main metric per task kind (the one compared across models; ``higher`` says which direction is better)
------------------------------------------------------------------------------------------------------
==============  =====================  ======
kind            main metric            higher
==============  =====================  ======
``binary``      ``auroc``              yes
``multiclass``  ``auroc_macro``        yes
``multilabel``  ``auroc_macro``        yes
``regression``  ``mae``                no
``clustering``  ``silhouette``         yes
==============  =====================  ======

TIM from attention
------------------
For a model whose task ``i`` mixes its own representation with what it attends to in the other tasks,
``h_i = beta_i r_i + (1 - beta_i) sum_j alpha_ij v_j``, the attention TIM is the share of task ``i``'s final
representation that comes from task ``j``, averaged over the rows where task ``i`` is present::

    TIM_att[i, i] = mean(beta_i)                       (self-exploitation)
    TIM_att[i, j] = mean((1 - beta_i) * alpha_ij)      (cross-exploration from task j), j != i

Each row sums to 1.

TIM by ablation
---------------
``TIM_abl[i, j]`` is the change in task ``i``'s main metric when task ``j`` is removed, signed so that a positive
value means task ``j`` helps task ``i``, and relative to the full model::

    TIM_abl[i, j] = s_i * (m_i(full) - m_i(without j)) / |m_i(full)|,   s_i = +1 if higher is better, else -1

"Without j" is either the same trained model with task ``j`` hidden from the attention (``attention`` ablation)
or a model retrained without task ``j`` (``retrain`` ablation, which also removes ``j``'s gradient from the shared
encoders). The diagonal is undefined (NaN). :func:`tim_agreement` rank-correlates the off-diagonal entries of the
two matrices.

Relative improvement
--------------------
``relative_improvement(m_mt, m_st, higher)`` is ``(m_mt - m_st) / |m_st|`` for higher-is-better metrics and
``(m_st - m_mt) / |m_st|`` otherwise: positive means the multitask model is better.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import silhouette_score

from healthfusion.evaluation.bootstrap import bootstrap_ci
from healthfusion.evaluation.calibration import CALIBRATION_METRICS, calibration_metrics_batch
from healthfusion.evaluation.metrics import auroc, multiclass_metrics, multilabel_metrics, regression_metrics

log = logging.getLogger(__name__)

MAIN_METRIC: dict[str, tuple[str, bool]] = {
    "binary": ("auroc", True),
    "multiclass": ("auroc_macro", True),
    "multilabel": ("auroc_macro", True),
    "regression": ("mae", False),
    "clustering": ("silhouette", True),
}


def valid_rows(kind: str, y_true: np.ndarray) -> np.ndarray:
    """``[n]`` bool: rows with a label (not NaN, not -1, no NaN in a multilabel row). All True for clustering."""
    y = np.asarray(y_true)
    if kind == "clustering":
        return np.ones(len(y), dtype=bool)
    if kind == "multiclass":
        return y >= 0
    if y.ndim == 2:
        return ~np.isnan(y).any(axis=1)
    return ~np.isnan(y.astype(float))


def cluster_metrics(embedding: np.ndarray, assignment: np.ndarray, n_clusters: int, seed: int = 0,
                    sample_size: int = 3000) -> dict:
    """Silhouette of hard cluster ``assignment`` ([n] int) in ``embedding`` ([n, D]) and the cluster sizes.

    The silhouette is computed on at most ``sample_size`` rows (seeded) and is NaN when fewer than two clusters are
    used. Returns ``silhouette``, ``n_clusters_used``, ``sizes`` (list of K counts) and ``n``.
    """
    sizes = np.bincount(np.asarray(assignment, dtype=np.int64), minlength=n_clusters)
    used = int((sizes > 0).sum())
    sil = float("nan")
    if used >= 2 and len(assignment) > used:
        size = min(sample_size, len(assignment))
        sil = float(silhouette_score(embedding, assignment, sample_size=size, random_state=seed))
    return {"silhouette": sil, "n_clusters_used": used, "sizes": sizes.tolist(), "n": int(len(assignment))}


def task_metrics(kind: str, y_true: np.ndarray | None, y_pred: np.ndarray, embedding: np.ndarray | None = None,
                 seed: int = 0) -> dict:
    """All metrics of one task on the rows with a label (see :mod:`healthfusion.evaluation.metrics`).

    ``y_pred`` holds probabilities (classification), values (regression) or soft cluster assignments
    ``[n, K]`` (clustering, which needs ``embedding`` and ignores ``y_true``). The dict always has ``main`` (the
    main metric's value), ``main_metric`` and ``n``; a binary task's also has ``n_positive``, ``ece``, ``cal_slope`` and
    ``cal_intercept`` (:func:`~healthfusion.evaluation.calibration.calibration_metrics_batch`) beside its AUROC.

    Raises
    ------
    ValueError
        On an unknown kind or no labelled row.
    """
    if kind not in MAIN_METRIC:
        raise ValueError(f"Unknown task kind {kind!r}; expected one of {', '.join(MAIN_METRIC)}.")
    name, _ = MAIN_METRIC[kind]
    if kind == "clustering":
        if embedding is None:
            raise ValueError("Clustering metrics need the embedding the clusters live in.")
        out = cluster_metrics(embedding, np.argmax(y_pred, axis=1), y_pred.shape[1], seed=seed)
    else:
        keep = valid_rows(kind, y_true)
        if not keep.any():
            raise ValueError(f"No labelled row to evaluate the {kind} task on.")
        y, p = np.asarray(y_true)[keep], np.asarray(y_pred)[keep]
        if kind == "binary":
            out = {"auroc": auroc(y, p), "prevalence": float(np.mean(y)), "n": int(len(y)), "n_positive": int(y.sum())}
            calibration = calibration_metrics_batch(y, p)
            out.update({m: float(calibration[m][0]) for m in CALIBRATION_METRICS})
        elif kind == "multiclass":
            out = multiclass_metrics(y, p)
        elif kind == "multilabel":
            out = multilabel_metrics(y, p)
        else:
            out = regression_metrics(y, p)
    out["main_metric"] = name
    out["main"] = out[name]
    return out


def _main_fn(kind: str):
    name, _ = MAIN_METRIC[kind]

    def fn(y, p):
        try:
            return task_metrics(kind, y, p)[name]
        except ValueError:
            return float("nan")

    return fn


def main_metric_ci(kind: str, y_true: np.ndarray, y_pred: np.ndarray, n_boot: int = 200, seed: int = 0):
    """Percentile-bootstrap 95% CI of a supervised task's main metric over its labelled rows
    (:class:`~healthfusion.evaluation.bootstrap.BootstrapCI`; stratified by class for binary tasks)."""
    keep = valid_rows(kind, y_true)
    y, p = np.asarray(y_true)[keep], np.asarray(y_pred)[keep]
    return bootstrap_ci(_main_fn(kind), y, p, n_boot=n_boot, seed=seed, stratified=kind == "binary")


def relative_improvement(multi: float, single: float, higher: bool) -> float:
    """Relative improvement of ``multi`` over ``single`` (positive = multitask better; NaN if ``single`` is 0)."""
    if single == 0 or not np.isfinite(single) or not np.isfinite(multi):
        return float("nan")
    diff = multi - single if higher else single - multi
    return float(diff / abs(single))


def attention_tim(task_names: Sequence[str], attention: np.ndarray, self_weight: np.ndarray,
                  present: np.ndarray | None = None) -> pd.DataFrame:
    """The attention TIM (see the module docstring) as a ``T x T`` frame (rows: task i, columns: task j).

    Parameters
    ----------
    attention : [n, T, T]
    self_weight : [n, T]
    present : [n, T] bool, optional
        Rows where task i is present (default: all).

    Raises
    ------
    ValueError
        On shapes that do not match ``task_names``.
    """
    t = len(task_names)
    attention = np.asarray(attention, dtype=float)
    beta = np.asarray(self_weight, dtype=float)
    if attention.ndim != 3 or attention.shape[1:] != (t, t) or beta.shape != attention.shape[:2]:
        raise ValueError(f"Expected attention [n, {t}, {t}] and self_weight [n, {t}]; got {attention.shape} "
                         f"and {beta.shape}.")
    present = np.ones(beta.shape, bool) if present is None else np.asarray(present, bool)
    share = (1.0 - beta)[:, :, None] * attention
    idx = np.arange(t)
    share[:, idx, idx] = beta
    matrix = np.full((t, t), np.nan)
    for i in range(t):
        rows = present[:, i]
        if rows.any():
            matrix[i] = share[rows, i].mean(axis=0)
    return pd.DataFrame(matrix, index=list(task_names), columns=list(task_names))


def ablation_tim(task_names: Sequence[str], kinds: Mapping[str, str], full: Mapping[str, float],
                 without: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """The ablation TIM (see the module docstring): ``without[j][i]`` is task i's main metric with task j removed.

    Tasks absent from ``without`` give a NaN column; the diagonal is NaN.
    """
    names = list(task_names)
    matrix = pd.DataFrame(np.nan, index=names, columns=names)
    for j, metrics in without.items():
        for i in names:
            if i == j or i not in metrics:
                continue
            higher = MAIN_METRIC[kinds[i]][1]
            ref = full[i]
            if ref == 0 or not np.isfinite(ref):
                continue
            sign = 1.0 if higher else -1.0
            matrix.loc[i, j] = sign * (ref - metrics[i]) / abs(ref)
    return matrix


def tim_agreement(att: pd.DataFrame, abl: pd.DataFrame) -> dict:
    """Spearman rank correlation between the off-diagonal entries of two TIMs (pairs where both are finite)."""
    t = len(att)
    off = ~np.eye(t, dtype=bool)
    a, b = att.to_numpy()[off], abl.loc[att.index, att.columns].to_numpy()[off]
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return {"spearman": float("nan"), "n_pairs": int(keep.sum())}
    rho = stats.spearmanr(a[keep], b[keep]).statistic
    return {"spearman": float(rho), "n_pairs": int(keep.sum())}


def plot_tim(matrix: pd.DataFrame, path: str | Path, title: str = "Task interdependence (TIM)",
             dpi: int = 120) -> Path:
    """Heatmap of a TIM (rows: the task that is helped, columns: the contributing task), values annotated."""
    from matplotlib.figure import Figure

    from healthfusion.evaluation.plots import _save

    values = matrix.to_numpy(dtype=float)
    t = len(matrix)
    fig = Figure(figsize=(1.1 * t + 2.5, 1.0 * t + 1.5))
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
    signed = finite.size and finite.min() < 0
    image = ax.imshow(values, cmap="RdBu" if signed else "viridis",
                      vmin=-vmax if signed else 0.0, vmax=vmax or 1.0)
    ax.set_xticks(range(t), list(matrix.columns), rotation=45, ha="right")
    ax.set_yticks(range(t), list(matrix.index))
    ax.set_xlabel("task j (contributes)")
    ax.set_ylabel("task i (receives)")
    for i in range(t):
        for j in range(t):
            if np.isfinite(values[i, j]):
                strong = abs(values[i, j]) > 0.6 * (vmax or 1.0) if signed else values[i, j] < 0.4 * (vmax or 1.0)
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if strong else "black")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    return _save(fig, path, dpi)
