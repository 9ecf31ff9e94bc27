"""ROC and precision-recall figures for one or more binary risk models, saved as PNG.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so no global backend or figure
state is touched and nothing needs closing.

Example
-------
>>> results = {"lr": ([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.6])}
>>> plot_roc(results, "roc.png")  # doctest: +SKIP
PosixPath('roc.png')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from healthfusion.evaluation.metrics import auprc, auroc, check_binary_input
from healthfusion.files import atomic_path, display_path

logger = logging.getLogger(__name__)

ArrayLike = Any


def _prepare(results: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not isinstance(results, Mapping) or len(results) == 0:
        raise ValueError(f"Expected a non-empty dict {{model_name: (y_true, y_prob)}}, got {results!r:.80}.")
    checked = {}
    for name, pair in results.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"Expected results[{name!r}] to be a (y_true, y_prob) pair, got {type(pair).__name__}.")
        try:
            checked[str(name)] = check_binary_input(*pair)
        except ValueError as err:
            raise ValueError(f"Model {name!r}: {err}") from err
    return checked


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    out = Path(path)
    with atomic_path(out) as tmp:  # a reader never sees a half-written figure
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    logger.info("Saved figure to %s", display_path(out))
    return out


def _skip_one_class(name: str, y: np.ndarray, what: str) -> bool:
    if y.min() == y.max():
        logger.warning("Model %r: %s curve undefined with only one class present (n=%d); not drawn.",
                       name, what, y.size)
        return True
    return False


def plot_roc(
    results: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    title: str = "ROC curve",
    dpi: int = 150,
) -> Path:
    """Draw every model's ROC curve in one figure (AUROC in the legend, chance diagonal) and save it as PNG.

    Args:
        results: ``{model_name: (y_true [n], y_prob [n])}``.
        path: output file; parent folders are created.
        title, dpi: figure title and resolution.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: empty ``results`` or bad input for a model (the message names the model). A model whose
            ``y_true`` has one class is left out with a warning.
    """
    checked = _prepare(results)
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUROC = 0.500)")
    for name, (y, p) in checked.items():
        if _skip_one_class(name, y, "ROC"):
            continue
        fpr, tpr, _ = roc_curve(y, p)
        area = auroc(y, p)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUROC = {area:.3f}, n = {y.size})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path, dpi)


def plot_pr(
    results: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    title: str = "Precision-recall curve",
    dpi: int = 150,
) -> Path:
    """Draw every model's precision-recall curve in one figure and save it as PNG.

    The legend gives each model's AUPRC (average precision). A horizontal line marks the prevalence (the AUPRC of
    a chance model): one line when all models share a prevalence, else one per model in its colour.

    Args, returns and raises as in :func:`plot_roc`.
    """
    checked = _prepare(results)
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    prevalences = {name: float(y.mean()) for name, (y, _) in checked.items()}
    shared = len({round(v, 12) for v in prevalences.values()}) == 1
    if shared:
        prev = next(iter(prevalences.values()))
        ax.axhline(prev, linestyle="--", color="grey", linewidth=1, label=f"prevalence = {prev:.3f}")
    for name, (y, p) in checked.items():
        if _skip_one_class(name, y, "Precision-recall"):
            continue
        precision, recall, _ = precision_recall_curve(y, p)
        area = auprc(y, p)
        (line,) = ax.plot(recall, precision, drawstyle="steps-post", linewidth=1.5,
                          label=f"{name} (AUPRC = {area:.3f}, n = {y.size})")
        if not shared:
            ax.axhline(prevalences[name], linestyle="--", linewidth=1, color=line.get_color(),
                       label=f"{name} prevalence = {prevalences[name]:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, path, dpi)
