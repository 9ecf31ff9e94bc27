"""Static tabular features -> a float matrix: numeric columns mean-imputed and standardised (+ a missing
indicator), categorical columns one-hot encoded, a missing category either kept as its own ``<missing>`` level (the
default, so absence stays visible) or imputed with the training mode. Categories unseen in training map to no column (all zeros) and are
counted in ``unseen_counts_``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.features.base import FeatureTransformer, positions

MISSING = "<missing>"


class StaticTransformer(FeatureTransformer):
    """Encode the cohort's ``static`` table.

    Parameters
    ----------
    columns : sequence of str, optional
        Static columns to use (default: all typed columns in ``cohort.meta.feature_types``).
    exclude : sequence of str
        Columns never to use (e.g. a column that duplicates the label).
    max_categories : int, default 50
        Categories beyond the most frequent ``max_categories`` share one ``<other>`` column.
    categorical_missing : {"level", "mode"}, default "level"
        ``level``: a missing category is its own ``<missing>`` level; ``mode``: it takes the training mode.

    Attributes
    ----------
    numeric_, categorical_ : list of str
    mean_, std_ : list of float
    categories_ : dict of str to list of str
    feature_names_ : list of str
        Output column names, in order.
    """

    _fitted = ("numeric_", "categorical_", "mean_", "std_", "modes_", "categories_", "feature_names_")

    def __init__(self, columns: Sequence[str] | None = None, exclude: Sequence[str] = (), max_categories: int = 50,
                 categorical_missing: str = "level"):
        self.columns = columns
        self.exclude = exclude
        self.max_categories = max_categories
        self.categorical_missing = categorical_missing

    def _categories(self, df: pd.DataFrame, col: str) -> pd.Series:
        vals = df[col].astype("string")
        if self.categorical_missing == "mode":
            return vals.fillna(self.modes_[col])
        return vals.fillna(MISSING)

    def _frame(self, cohort: Cohort, stay_ids) -> pd.DataFrame:
        static = cohort.static
        if static is None:
            raise ValueError(f"Cohort {cohort.meta.name!r} has no static table; drop 'static' from the modalities.")
        return static.set_index("stay_id").reindex([str(s) for s in stay_ids])

    def fit(self, cohort: Cohort, stay_ids: Sequence[str]) -> StaticTransformer:
        types = cohort.meta.feature_types
        cols = list(self.columns) if self.columns is not None else list(types)
        unknown = [c for c in cols if c not in types]
        if unknown:
            raise ValueError(f"Static column(s) {unknown} not in the cohort; it has {list(types)}.")
        cols = [c for c in cols if c not in set(self.exclude)]
        if self.categorical_missing not in ("level", "mode"):
            raise ValueError(f"categorical_missing must be 'level' or 'mode'; got {self.categorical_missing!r}.")
        df = self._frame(cohort, stay_ids)
        self.numeric_ = [c for c in cols if types[c] == "numeric"]
        self.categorical_ = [c for c in cols if types[c] == "categorical"]
        num = df[self.numeric_].apply(pd.to_numeric, errors="coerce")
        self.mean_ = num.mean().fillna(0.0).astype(float).tolist()
        self.std_ = num.std().fillna(1.0).replace(0.0, 1.0).astype(float).tolist()
        self.modes_ = {}
        for c in self.categorical_:
            mode = df[c].astype("string").mode()
            self.modes_[c] = str(mode.iloc[0]) if len(mode) else MISSING
        self.categories_ = {}
        for c in self.categorical_:
            counts = self._categories(df, c).value_counts()
            levels = sorted(counts.index[: self.max_categories].tolist())
            if len(counts) > self.max_categories:
                levels.append("<other>")
            self.categories_[c] = levels
        self.feature_names_ = [f for c in self.numeric_ for f in (c, f"{c}__missing")] + [
            f"{c}={lvl}" for c in self.categorical_ for lvl in self.categories_[c]
        ]
        return self

    def transform(self, cohort: Cohort, stay_ids: Sequence[str]) -> np.ndarray:
        """``[len(stay_ids), len(feature_names_)]`` float32 matrix."""
        self._check_fitted()
        df = self._frame(cohort, stay_ids)
        numeric = df[self.numeric_].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float) if self.numeric_ \
            else np.zeros((len(df), 0))
        categorical = {c: df[c].astype("string").to_numpy(dtype=object, na_value=None) for c in self.categorical_}
        return self.transform_columns(numeric, categorical)

    def transform_columns(self, numeric: np.ndarray, categorical: dict[str, np.ndarray]) -> np.ndarray:
        """Encode static values given as arrays: what :meth:`transform` does after reading the cohort, and what
        the scoring service calls on a request's values (so both give the same matrix).

        Parameters
        ----------
        numeric : [n, len(numeric_)] float
            The numeric columns in ``numeric_`` order, NaN where missing.
        categorical : dict of column -> [n] object
            Each of ``categorical_`` as text, None where missing.

        Returns
        -------
        ``[n, len(feature_names_)]`` float32 matrix.
        """
        self._check_fitted()
        n = numeric.shape[0]
        blocks = []
        if self.numeric_:
            missing = np.isnan(numeric)
            mean = np.asarray(self.mean_)
            z = (np.where(missing, mean, numeric) - mean) / np.asarray(self.std_)
            blocks.append(np.stack([z, missing.astype(float)], axis=2).reshape(n, -1))
        self.unseen_counts_ = {}
        for c in self.categorical_:
            levels = self.categories_[c]
            vals = np.asarray(categorical[c], dtype=object)
            fill = self.modes_[c] if self.categorical_missing == "mode" else MISSING
            vals = np.where(pd.isna(vals), fill, vals).astype(object)
            codes = positions(levels, vals)
            if "<other>" in levels:
                codes = np.where(codes >= 0, codes, levels.index("<other>"))
            self.unseen_counts_[c] = int((codes < 0).sum())
            onehot = np.zeros((n, len(levels)))
            rows = np.flatnonzero(codes >= 0)
            onehot[rows, codes[rows]] = 1.0
            blocks.append(onehot)
        if not blocks:
            return np.zeros((n, 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)
