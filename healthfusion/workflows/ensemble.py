"""Fitting the members of a run's ensemble (:class:`~healthfusion.models.run_ensemble.RunEnsemble`, the saved model
type): out-of-fold member predictions for choosing the ensemble weights on stays no member saw."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.base import clone

from healthfusion.data.cohort import Cohort
from healthfusion.data.splits import split_patients
from healthfusion.features.compose import CohortFeaturizer, engineered_features
from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.base import PretrainedModel
from healthfusion.models.boosting import BoostingClassifier
from healthfusion.models.run_ensemble import BOOSTING, HYBRID, bag_probability


def refit_boosting(fitted: BoostingClassifier) -> BoostingClassifier:
    """An unfitted copy of ``fitted`` that grows exactly its tree count (no early-stopping split)."""
    return clone(fitted).set_params(n_estimators=int(fitted.n_trees_), early_stopping_rounds=None,
                                    validation_fraction=None)


def cross_fitted(
    cohort: Cohort,
    stay_ids: Sequence[str],
    label: str,
    *,
    fit_featurizer: Callable[[list[str]], CohortFeaturizer],
    fit_network: Callable[[CohortFeaturizer, ArrayDataset], PretrainedModel],
    boosting: BoostingClassifier | None,
    stats: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    on_fold: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Out-of-fold predictions of each member for ``stay_ids``: each stay is scored by members fitted on the other
    folds (patient-level, stratified by ``label``), to choose ensemble weights on stays no member saw.

    ``fit_featurizer(ids)`` returns a featurizer fitted on ``ids``; ``fit_network(featurizer, data)`` trains one
    hybrid network without validation (a fixed epoch count); ``boosting`` is refitted with its tree count.

    Returns
    -------
    (y [n], {member: p [n]})
        In the order of ``stay_ids``; a member's NaN marks stays it cannot score.
    """
    ids = [str(s) for s in stay_ids]
    stays = cohort.stays[cohort.stays["stay_id"].astype(str).isin(ids)]
    fold_of = split_patients(stays, {f"fold{k}": 1.0 / folds for k in range(folds)}, seed=seed,
                             stratify=cohort.label(label)).reindex(ids)
    y = cohort.label(label).reindex(ids).to_numpy(dtype=np.float64)
    out = {HYBRID: np.full(len(ids), np.nan)}
    if boosting is not None:
        out[BOOSTING] = np.full(len(ids), np.nan)
    for k in range(folds):
        held = (fold_of == f"fold{k}").to_numpy()
        fit_ids, held_ids = [ids[i] for i in np.flatnonzero(~held)], [ids[i] for i in np.flatnonzero(held)]
        feat = fit_featurizer(fit_ids)
        train, test = feat.transform(cohort, fit_ids), feat.transform(cohort, held_ids, with_target=False)
        net = fit_network(feat, train[train.usable_rows()])
        usable = test.usable_rows()
        p = np.full(len(held_ids), np.nan)
        if usable.any():
            p[usable] = bag_probability([net], test[usable])
        out[HYBRID][held] = p
        if boosting is not None:
            gbm = refit_boosting(boosting).fit(engineered_features(cohort, feat, fit_ids, stats=stats),
                                               y[~held].astype(int))
            out[BOOSTING][held] = gbm.predict_proba(engineered_features(cohort, feat, held_ids, stats=stats))[:, 1]
        if on_fold is not None:
            on_fold(k)
    return y, out
