"""The top contributing features of each scored patient in a ``/v1/predict`` answer.

Integrated Gradients of the hybrid network's logit (:func:`healthfusion.evaluation.explain.attribute_timeseries`,
the attribution code of the report), from a reference patient at the training means: all-zero standardised
time-series values and static features (zero is the training mean of every standardised input, and the value an
unobserved variable is imputed with). The rest of each patient's inputs (masks, time since last observation,
presence flags) is held at the patient's own values. An attribution is in logit units; the attributions of one
patient sum (over every feature, not only the top ``k``) to its logit minus the reference's, up to the
integration error of ``steps`` Gauss-Legendre points. Time-series attributions are summed over the window, one
per variable; static ones are per encoded feature (``age``, ``age__missing``, ``sex=F``, summary bins).

Explained: hybrid models over time series (and static values); other kinds and static-only models answer without
attributions (an empty list). With ``--backend onnx`` the gradients come from the same weights in torch.
"""

from __future__ import annotations

import numpy as np
import torch

from healthfusion.evaluation.explain import attribute_timeseries, model_forward
from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.scoring import ScoringModel

#: Gauss-Legendre points of the Integrated Gradients integral (each a forward and backward pass of the batch)
EXPLAIN_STEPS = 8


def explains(model: ScoringModel) -> bool:
    """Whether :func:`top_contributions` can attribute this model's scores (a hybrid over time series)."""
    return model.network is not None and "ts" in model.featurizer.transformers_ and model.reads_records


def feature_names(model: ScoringModel) -> tuple[list[str], list[str]]:
    """(time-series variables, static feature names) of the model's inputs, in input order."""
    t = model.featurizer.transformers_
    static = list(t["static"].feature_names_) if "static" in t else []
    if "summary" in t:
        static += list(t["summary"].feature_names_)
    return list(t["ts"].variables_), static


def top_contributions(model: ScoringModel, data: ArrayDataset, k: int,
                      steps: int = EXPLAIN_STEPS) -> list[list[tuple[str, float]]]:
    """Each row's ``k`` features with the largest absolute attribution, ``(name, attribution)`` largest first; an
    empty list for a row without any input (not scored), and for every row when ``k`` is 0 or the model is not
    explained (see :func:`explains`).

    Raises
    ------
    ValueError
        ``k`` or ``steps`` below their minimum (0 and 1).
    """
    if k < 0 or steps < 1:
        raise ValueError(f"Need k >= 0 and steps >= 1; got k={k}, steps={steps}.")
    out: list[list[tuple[str, float]]] = [[] for _ in range(len(data))]
    rows = np.flatnonzero(data.usable_rows())
    if k == 0 or not explains(model) or not len(rows):
        return out
    variables, static = feature_names(model)
    batch = data[rows].batch()
    include_static = B.STATIC in batch and bool(static)
    reference = {B.TS_VALUES: torch.zeros((1, *batch[B.TS_VALUES].shape[1:]))}
    if include_static:
        reference[B.STATIC] = torch.zeros((1, batch[B.STATIC].shape[1]))
    network = model.network
    was_training = network.training
    network.eval()
    try:
        result = attribute_timeseries(model_forward(network), batch, background=reference, variables=variables,
                                      method="integrated_gradients", n_samples=steps, include_static=include_static,
                                      static_names=static if include_static else None, chunk_size=len(rows))
    finally:
        network.train(was_training)
    table = result.per_variable()
    values, names = table.to_numpy(), list(table.columns)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
    for i, row in enumerate(rows):
        out[row] = [(names[j], float(values[i, j])) for j in order[i]]
    return out
