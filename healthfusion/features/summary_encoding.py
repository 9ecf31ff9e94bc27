"""Per-variable summary statistics of the time series, encoded for a neural network's static ("wide") branch.

:class:`SummaryTransformer` computes the same statistics as the classical baselines' engineered features
(:func:`~healthfusion.features.summary.summary_features`: last/mean/min/max/std/count of each variable's plausible
observations in the window before the prediction time) and encodes them with a *piecewise-linear encoding* (PLE):
each statistic's training distribution is cut at ``n_bins`` quantiles, and a value becomes ``n_bins`` numbers in
[0, 1], bin ``k`` being 1 above its upper edge, 0 below its lower edge and linear in between. Neural networks learn
threshold-like effects (e.g. risk rising only past a lactate of 4) much more easily from this encoding than from one
standardised number (Gorishniy et al., "On embeddings for numerical features in tabular deep learning", 2022).
Counts are log-transformed first. A missing statistic encodes as all zeros, and one indicator per variable flags
"never observed in the window".

Used by :class:`~healthfusion.features.compose.CohortFeaturizer` with ``summary=True``, which appends this block to
the ``static`` array: the hybrid model then sees the raw sequence through its LSTM (deep) and the summaries through
its static MLP (wide).

Example::

    tr = SummaryTransformer(hours=48, n_bins=8).fit(cohort, train_ids)
    x = tr.transform(cohort, test_ids)        # [n, len(tr.feature_names_)] float32
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort, per_stay
from healthfusion.data.plausibility import plausible_values
from healthfusion.features.base import FeatureTransformer
from healthfusion.features.summary import SUMMARY_STATS, summary_features


def window_events(cohort: Cohort, stay_ids: Sequence[str], hours: float) -> pd.DataFrame:
    """The plausible observable events of ``stay_ids`` in the ``hours`` before each stay's prediction time: what
    the summary statistics (here and in the classical baselines' engineered features) are computed from."""
    return in_window(cohort.observable("events", stay_ids), cohort.stays.set_index("stay_id")["prediction_time"],
                     hours)


def in_window(events: pd.DataFrame, prediction_time: pd.Series, hours: float) -> pd.DataFrame:
    """The rows of ``events`` (``stay_id, time, variable, value``) with a plausible value and a time within the
    ``hours`` up to their stay's prediction time (``prediction_time`` indexed by stay_id), in their order."""
    at = per_stay(events["stay_id"], prediction_time)
    time = events["time"].to_numpy(dtype=float)
    keep = (time <= at) & (time >= at - hours)
    keep &= plausible_values(events["variable"], events["value"].to_numpy(dtype=float))
    return events[keep]


class SummaryTransformer(FeatureTransformer):
    """Summary statistics of the ``events`` table, piecewise-linear encoded.

    Parameters
    ----------
    variables : sequence of str, optional
        Variables to summarise, in this order. Default: every variable with at least ``min_count`` plausible
        training observations in the window.
    hours : float, default 48
        Length of the window that ends at each stay's prediction time.
    stats : sequence of str, default all of :data:`~healthfusion.features.summary.SUMMARY_STATS`
    n_bins : int, default 8
        Quantile bins per statistic (fewer where the training values have fewer distinct quantiles).
    min_count : int, default 10

    Attributes
    ----------
    variables_ : list of str
    edges_ : dict of str to list of float
        Bin edges of each encoded statistic column (``"<variable>__<stat>"``); a column whose training values are
        constant or all missing is not encoded (it carries no information).
    feature_names_ : list of str
        Output columns: ``"<column>#<k>"`` for bin k of each encoded column, then ``"<variable>__unobserved"``.

    Raises
    ------
    ValueError
        In ``fit``: bad parameters, or no variable with enough observations.
    """

    _fitted = ("variables_", "edges_", "feature_names_")

    def __init__(self, variables: Sequence[str] | None = None, hours: float = 48.0,
                 stats: Sequence[str] = SUMMARY_STATS, n_bins: int = 8, min_count: int = 10):
        self.variables = variables
        self.hours = hours
        self.stats = stats
        self.n_bins = n_bins
        self.min_count = min_count

    def _summaries(self, events: pd.DataFrame, stay_ids: list[str], variables: Sequence[str]) -> pd.DataFrame:
        table = summary_features(events, stay_ids, list(variables), stats=tuple(self.stats))
        counts = [c for c in table.columns if c.endswith("__count")]
        table[counts] = np.log1p(table[counts].astype(np.float64))
        return table.astype(np.float64)

    def fit(self, cohort: Cohort, stay_ids: Sequence[str]) -> SummaryTransformer:
        """Learn the variables and each statistic's quantile edges from the training stays ``stay_ids`` only."""
        if not self.hours > 0:
            raise ValueError(f"hours must be > 0, got {self.hours!r}.")
        if isinstance(self.n_bins, bool) or not isinstance(self.n_bins, int) or self.n_bins < 1:
            raise ValueError(f"n_bins must be an integer >= 1, got {self.n_bins!r}.")
        stay_ids = [str(s) for s in stay_ids]
        if self.variables is not None:
            variables = [str(v) for v in self.variables]
        else:
            counts = window_events(cohort, stay_ids, self.hours)["variable"].value_counts()
            variables = sorted(str(v) for v in counts.index[counts >= self.min_count])
        if not variables:
            raise ValueError("No time-series variable has enough training observations to summarise; check the "
                             "events table or lower min_count.")
        table = self._summaries(window_events(cohort, stay_ids, self.hours), stay_ids, variables)
        quantiles = np.linspace(0.0, 1.0, self.n_bins + 1)
        edges = {}
        for column in table.columns:
            values = table[column].dropna().to_numpy()
            if len(values) == 0:
                continue
            cut = np.unique(np.quantile(values, quantiles))
            if len(cut) >= 2:
                edges[column] = cut.tolist()
        self.variables_ = variables
        self.edges_ = edges
        self.feature_names_ = [f"{c}#{k}" for c, e in edges.items() for k in range(len(e) - 1)] + [
            f"{v}__unobserved" for v in variables
        ]
        return self

    def _observed(self, table: pd.DataFrame, variable: str) -> np.ndarray:
        if "count" in self.stats:
            return table[f"{variable}__count"].to_numpy() > 0
        return table[[f"{variable}__{stat}" for stat in self.stats]].notna().any(axis=1).to_numpy()

    def transform(self, cohort: Cohort, stay_ids: Sequence[str]) -> np.ndarray:
        """``[len(stay_ids), len(feature_names_)]`` float32 matrix, values in [0, 1]."""
        stay_ids = [str(s) for s in stay_ids]
        return self.transform_events(window_events(cohort, stay_ids, self.hours), stay_ids)

    def transform_events(self, events: pd.DataFrame, stay_ids: Sequence[str]) -> np.ndarray:
        """:meth:`transform` from the stays' window events (``stay_id, time, variable, value``, as
        :func:`in_window` selects them): what the scoring service calls on a request's events."""
        self._check_fitted()
        stay_ids = [str(s) for s in stay_ids]
        table = self._summaries(events, stay_ids, self.variables_)
        blocks = []
        # the column order is the fitted feature order, never the dict's: a JSON round trip with sorted keys
        # (how saved models store this state) reorders edges_
        for column in dict.fromkeys(name.rsplit("#", 1)[0] for name in self.feature_names_ if "#" in name):
            cut = self.edges_[column]
            x = table[column].to_numpy()[:, None]
            lo, hi = np.asarray(cut[:-1])[None, :], np.asarray(cut[1:])[None, :]
            with np.errstate(invalid="ignore"):
                z = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
            blocks.append(np.nan_to_num(z, nan=0.0))
        observed = np.column_stack([self._observed(table, v) for v in self.variables_])
        blocks.append((~observed).astype(np.float64))
        return np.concatenate(blocks, axis=1).astype(np.float32)
