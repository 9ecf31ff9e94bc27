"""Figures of the audit: reliability diagram, decision curve, subgroup forest plot, attribution bars, attention over
time with the series, saliency overlays and modality contributions. Each function saves one PNG and returns its path.

Figures use :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state), as :mod:`healthfusion.evaluation.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from healthfusion.evaluation.calibration import ece_from_curve, reliability_curve
from healthfusion.evaluation.disclosure import MIN_CELL, SUPPRESSED, small_groups
from healthfusion.evaluation.impact import decision_curve
from healthfusion.evaluation.plots import _save

ArrayLike = Any


def plot_reliability(results: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path, n_bins: int = 10,
                     title: str = "Calibration (reliability)", dpi: int = 120) -> Path:
    """Observed event rate against mean predicted risk per bin, one line per model (ECE over all bins in the legend),
    with a histogram of predictions below. Bins with fewer than 10 stays or events
    (:mod:`~healthfusion.evaluation.disclosure`) are not drawn as points; the histogram's bars under 10 stays
    are not drawn either."""
    fig = Figure(figsize=(5.5, 6.0))
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, (y, p) in results.items():
        table = reliability_curve(y, p, n_bins=n_bins)
        ece = ece_from_curve(table)
        shown = table.assign(events=(table["observed"] * table["n"]).round())
        shown = shown[~small_groups(shown, "n", "events")]
        hidden = len(table) - len(shown)
        ax.plot(shown["mean_predicted"], shown["observed"], marker="o", linewidth=1.5,
                label=f"{name} (ECE = {ece:.3f}, n = {len(np.asarray(p))}"
                      + (f"; {hidden} small bin(s) not shown)" if hidden else ")"))
        counts, edges = np.histogram(np.asarray(p, dtype=float), bins=np.linspace(0, 1, n_bins * 2 + 1))
        counts = np.where(counts < MIN_CELL, 0, counts)
        hist.bar(edges[:-1], counts, width=np.diff(edges), align="edge", alpha=0.5, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed event rate", title=title)
    ax.legend(loc="upper left", fontsize="small")
    hist.set(xlabel="predicted risk", ylabel="stays")
    return _save(fig, path, dpi)


def plot_decision_curve(y_true: ArrayLike, probs: Mapping[str, ArrayLike], path: str | Path,
                        max_threshold: float = 0.6, dpi: int = 120) -> Path:
    """Net benefit across threshold probabilities for each model, "treat all" and "treat none"."""
    thresholds = np.arange(0.01, max_threshold + 1e-9, 0.01)
    fig = Figure(figsize=(6.0, 4.5))
    ax = fig.add_subplot()
    curve = None
    for name, p in probs.items():
        curve = decision_curve(y_true, p, thresholds)
        ax.plot(curve["threshold"], curve["net_benefit_model"], linewidth=1.5, label=name)
    if curve is not None:
        ax.plot(curve["threshold"], curve["net_benefit_all"], color="grey", linestyle="--", label="treat all")
        ax.axhline(0, color="black", linewidth=1, label="treat none")
        prevalence = float(np.mean(np.asarray(y_true, dtype=float)))
        ax.set_ylim(-0.05 * max(prevalence, 0.05), max(prevalence, 0.01) * 1.1)
    ax.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve")
    ax.legend(fontsize="small")
    return _save(fig, path, dpi)


def plot_subgroups(table: pd.DataFrame, path: str | Path, metric: str = "auroc", dpi: int = 120) -> Path:
    """Forest plot of ``metric`` with its CI per (attribute, group) of a :func:`group_metrics` table. Small groups
    (``small_group``: fewer than 10 stays or events, see :mod:`~healthfusion.evaluation.disclosure`)
    are not drawn; the title says how many were left out."""
    rows = table[~table["small_group"].astype(bool)].reset_index(drop=True)
    left_out = len(table) - len(rows)
    fig = Figure(figsize=(6.0, 0.3 * max(len(rows), 1) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    err = np.vstack([rows[metric] - rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"] - rows[metric]])
    ax.errorbar(rows[metric], y, xerr=np.nan_to_num(err), fmt="o", color="tab:blue", ecolor="tab:blue", capsize=2)
    ax.set_yticks(y, [f"{a}: {g} (n={n})" for a, g, n in rows[["attribute", "group", "n"]].to_numpy()],
                  fontsize="small")
    title = f"{metric.upper()} by subgroup (95% CI)"
    if left_out:
        title += f"\n{left_out} small group(s) not shown ({SUPPRESSED} stays or events)"
    ax.set(xlabel=metric.upper(), title=title)
    if metric in ("auroc", "tpr", "fpr", "ppv"):
        ax.set_xlim(0, 1)
    return _save(fig, path, dpi)


def plot_importance(importance: pd.Series, path: str | Path, top: int = 15, title: str = "Global importance",
                    xlabel: str = "mean |attribution| (logit)", dpi: int = 120) -> Path:
    """Horizontal bars of the ``top`` largest values of ``importance`` (largest on top)."""
    data = importance.sort_values(ascending=False).head(top)[::-1]
    fig = Figure(figsize=(6.0, 0.28 * len(data) + 1.2))
    ax = fig.add_subplot()
    ax.barh([str(i) for i in data.index], data.to_numpy(), color="tab:blue")
    ax.set(xlabel=xlabel, title=title)
    return _save(fig, path, dpi)


def plot_attention(series: np.ndarray, attention: np.ndarray, variables: Sequence[str], path: str | Path,
                   step_hours: float = 1.0, mask: np.ndarray | None = None, title: str = "", dpi: int = 120) -> Path:
    """One patient's standardised series (``[T, V]``, only observed points when ``mask`` is given) above the
    attention weight of each time step."""
    t = np.arange(series.shape[0]) * step_hours
    fig = Figure(figsize=(7.0, 4.5))
    ax, att = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for j, name in enumerate(variables):
        values = series[:, j].astype(float).copy()
        if mask is not None:
            values[mask[:, j] == 0] = np.nan
        ax.plot(t, values, marker=".", linewidth=1, label=name)
    ax.set(ylabel="standardised value", title=title or "Series and attention over time")
    ax.legend(fontsize="x-small", ncol=3, loc="upper left")
    att.bar(t, attention, width=step_hours * 0.9, color="tab:orange")
    att.set(xlabel="hours", ylabel="attention")
    return _save(fig, path, dpi)


def plot_saliency(images: np.ndarray, maps: Mapping[str, np.ndarray], path: str | Path,
                  titles: Sequence[str] | None = None, dpi: int = 120) -> Path:
    """A grid: one row per image, the image then each method's saliency map overlaid on it."""
    k = images.shape[0]
    cols = 1 + len(maps)
    fig = Figure(figsize=(2.2 * cols, 2.2 * k + 0.3))
    axes = np.atleast_2d(fig.subplots(k, cols, squeeze=False))
    for i in range(k):
        base = images[i].mean(axis=0)
        axes[i, 0].imshow(base, cmap="gray")
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize="small")
        for j, (name, m) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(base, cmap="gray")
            heat = m[i] / (m[i].max() + 1e-12)
            axes[i, j].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j].set_title(name, fontsize="small")
        for ax in axes[i]:
            ax.axis("off")
    return _save(fig, path, dpi)
