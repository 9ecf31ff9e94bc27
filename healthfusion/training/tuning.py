"""Grid search by stratified K-fold cross-validation on the training data.

A thin layer over scikit-learn's ``ParameterGrid`` and ``cross_val_score``; pass only the training part of your
data (the test set never enters tuning). Works with any scikit-learn classifier, including
:class:`~healthfusion.training.estimator.NeuralRiskClassifier` on an :class:`ArrayDataset` (whose
``trainer_config__<field>`` / ``model_config__<key>`` parameters can be searched).

Example::

    best, table = cross_validate_params(
        NeuralRiskClassifier(make_model), train_ds, y_train,
        {"trainer_config__lr": [1e-3, 3e-4], "model_config__hidden": [16, 32]}, cv=3,
    )
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import ParameterGrid, StratifiedKFold, cross_val_score

from healthfusion.features import batch as B

logger = logging.getLogger(__name__)


def cross_validate_params(
    estimator: BaseEstimator,
    X: Any,
    y: np.ndarray | None,
    param_grid: Mapping[str, Sequence[Any]],
    cv: int = 3,
    seed: int = 0,
    scoring: str = "roc_auc",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score every combination of ``param_grid`` by stratified ``cv``-fold CV and return the best.

    Parameters
    ----------
    estimator : scikit-learn estimator
        Cloned for every fit; not modified.
    X : ArrayDataset or array-like
        Training data only, [n] samples.
    y : array-like of shape (n,), optional
        Class labels. Default: ``X["target"]`` (ArrayDataset).
    param_grid : dict of str to list
        Parameter name -> candidate values (scikit-learn's ``ParameterGrid`` format).
    cv : int, default 3
        Number of stratified folds (shuffled with ``seed``; the same folds for every candidate).
    seed : int, default 0
    scoring : str, default "roc_auc"
        A scikit-learn scorer name (higher is better).

    Returns
    -------
    best_params : dict
        The candidate with the highest mean score (first one on ties).
    results : pandas.DataFrame
        One row per candidate, in grid order: ``param_<name>`` columns, ``mean_score``, ``std_score``,
        ``split<i>_score`` columns, ``fit_seconds`` and ``rank`` (1 = best).

    Raises
    ------
    ValueError
        If ``param_grid`` is empty, a value is not a list, ``cv < 2``, or ``y`` is missing; errors raised while
        fitting a candidate propagate (no candidate is silently scored NaN).
    """
    if not isinstance(param_grid, Mapping) or not param_grid:
        raise ValueError(
            f"param_grid must be a non-empty dict of name -> list of values; got {param_grid!r}."
        )
    for name, values in param_grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(
                f"param_grid[{name!r}] must be a non-empty list of candidate values; got {values!r}."
            )
    if not isinstance(cv, int) or cv < 2:
        raise ValueError(f"cv must be an int >= 2 (number of folds); got {cv!r}.")
    if y is None:
        if not (hasattr(X, "keys") and B.TARGET in X):
            raise ValueError("cross_validate_params got no y and X has no 'target' array; pass y.")
        y = X[B.TARGET]
    y = np.asarray(y)
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    rows = []
    for params in ParameterGrid(dict(param_grid)):
        candidate = clone(estimator).set_params(**params)
        start = time.perf_counter()
        scores = cross_val_score(candidate, X, y, cv=folds, scoring=scoring, error_score="raise")
        seconds = time.perf_counter() - start
        row = {f"param_{k}": v for k, v in params.items()}
        row.update(mean_score=float(np.mean(scores)), std_score=float(np.std(scores)))
        row.update({f"split{i}_score": float(s) for i, s in enumerate(scores)})
        row["fit_seconds"] = seconds
        rows.append((params, row))
        logger.info(
            "%s: %s = %.4f +/- %.4f (%.1f s)", params, scoring, row["mean_score"], row["std_score"], seconds
        )
    results = pd.DataFrame([row for _, row in rows])
    results["rank"] = results["mean_score"].rank(ascending=False, method="min").astype(int)
    best = int(np.argmax(results["mean_score"].to_numpy()))
    return dict(rows[best][0]), results
