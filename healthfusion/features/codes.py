"""Code sets (e.g. ICD) -> padded vocabulary ids for an embedding-bag encoder. Id 0 pads, id 1 is a code unseen in
training. Only codes observable at the prediction time are used (the leakage guard)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.features.base import FeatureTransformer

PAD, UNKNOWN = 0, 1


class CodeTransformer(FeatureTransformer):
    """Build a code vocabulary on training stays and encode each stay's codes.

    Parameters
    ----------
    min_count : int, default 5
        Codes seen in fewer training stays map to the unknown id.
    max_codes : int, default 64
        Codes per stay kept (the most recent first); the rest are dropped and counted in ``truncated_``.
    prefix_chars : int, optional
        Truncate codes to this many characters (e.g. 3 for ICD categories) before building the vocabulary.

    Attributes
    ----------
    vocabulary_ : list of str
        ``system:code`` strings; the id of ``vocabulary_[i]`` is ``i + 2``.
    """

    _fitted = ("vocabulary_",)

    def __init__(self, min_count: int = 5, max_codes: int = 64, prefix_chars: int | None = None):
        self.min_count = min_count
        self.max_codes = max_codes
        self.prefix_chars = prefix_chars

    def _codes(self, cohort: Cohort, stay_ids) -> pd.DataFrame:
        codes = cohort.observable("codes", stay_ids)
        code = codes["code"].astype(str)
        if self.prefix_chars:
            code = code.str.slice(0, self.prefix_chars)
        return codes.assign(token=codes["system"].astype(str) + ":" + code).drop_duplicates(["stay_id", "token"])

    @property
    def vocab_size(self) -> int:
        self._check_fitted()
        return len(self.vocabulary_) + 2

    def fit(self, cohort: Cohort, stay_ids: Sequence[str]) -> CodeTransformer:
        counts = self._codes(cohort, stay_ids)["token"].value_counts()
        self.vocabulary_ = sorted(counts.index[counts >= self.min_count].tolist())
        return self

    def transform(self, cohort: Cohort, stay_ids: Sequence[str]) -> np.ndarray:
        """``[len(stay_ids), max_codes]`` int64 ids (0 = padding)."""
        self._check_fitted()
        stay_ids = [str(s) for s in stay_ids]
        codes = self._codes(cohort, stay_ids).sort_values(["stay_id", "time"], ascending=[True, False])
        lookup = {tok: i + 2 for i, tok in enumerate(self.vocabulary_)}
        ids = codes["token"].map(lookup).fillna(UNKNOWN).astype(np.int64).to_numpy()
        rows = pd.Index(stay_ids).get_indexer(codes["stay_id"])
        rank = codes.groupby("stay_id", sort=False).cumcount().to_numpy()
        keep = rank < self.max_codes
        self.truncated_ = int((~keep).sum())
        out = np.zeros((len(stay_ids), self.max_codes), dtype=np.int64)
        out[rows[keep], rank[keep]] = ids[keep]
        return out
