"""Per-epoch sample orders: a seeded shuffle, or random minority oversampling to balanced classes.

Both draw only from the ``numpy.random.Generator`` they are given, so a trainer that saves the generator's state
(``rng.bit_generator.state``) in a checkpoint reproduces every later epoch after a resume.

Example::

    rng = np.random.default_rng(0)
    order = balanced_order(np.array([0, 0, 0, 1]), rng)  # 6 indices: three of class 0, three of class 1
"""

from __future__ import annotations

import numpy as np


def shuffled_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``0..n-1`` (int64, shape [n])."""
    return rng.permutation(n).astype(np.int64)


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices for one epoch in which every class appears as often as the largest class, shuffled.

    Every sample of every class is kept once; smaller classes are topped up by drawing their samples with
    replacement. Samples with a missing label (NaN or negative) are kept once each and not counted as a class.

    Parameters
    ----------
    labels : ndarray
        [n] class labels (binary 0/1 or multiclass ids).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int64
        Shape [K * n_max + n_missing], where ``n_max`` is the size of the largest class.

    Raises
    ------
    ValueError
        If ``labels`` is not 1-D (multilabel and regression targets cannot be oversampled by class).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"Oversampling needs one class label per sample ([n]); got shape {labels.shape}. "
            "Use imbalance='class_weight' or 'none' for multilabel targets."
        )
    y = labels.astype(np.float64)
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(y) & (y >= 0)
    parts = [np.flatnonzero(~valid)]
    classes, counts = np.unique(y[valid], return_counts=True)
    n_max = int(counts.max()) if counts.size else 0
    for cls, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(valid & (y == cls))
        parts.append(members)
        if count < n_max:
            parts.append(rng.choice(members, size=n_max - int(count), replace=True))
    order = np.concatenate(parts).astype(np.int64)
    return order[rng.permutation(order.size)]
