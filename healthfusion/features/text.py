"""Clinical notes -> hashed word n-gram ids for an embedding-bag text encoder.

Text is cleaned (lower-cased, digits collapsed to ``0``, punctuation to spaces), split into words, and every word
n-gram is hashed (CRC32, stable across runs and machines) into ``n_buckets`` ids. Id 0 pads. Only notes observable
at the prediction time are used; a stay's notes are concatenated in time order and the last ``max_tokens``
n-grams are kept.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from healthfusion.data.cohort import Cohort
from healthfusion.features.base import FeatureTransformer

_PUNCT = re.compile(r"[^a-z0-9 ]+")
_DIGITS = re.compile(r"[0-9]+")


def clean_text(text: str) -> str:
    """Lower-case, collapse digit runs to ``0`` and punctuation to single spaces."""
    text = _DIGITS.sub("0", str(text).lower())
    return " ".join(_PUNCT.sub(" ", text).split())


def hash_ngrams(text: str, n_buckets: int, ngram_max: int = 2) -> list[int]:
    """Ids in ``[1, n_buckets)`` of the word 1..``ngram_max``-grams of cleaned ``text``."""
    words = clean_text(text).split()
    out = []
    for n in range(1, ngram_max + 1):
        for i in range(len(words) - n + 1):
            gram = " ".join(words[i : i + n])
            out.append(1 + zlib.crc32(gram.encode()) % (n_buckets - 1))
    return out


class TextTransformer(FeatureTransformer):
    """Hash each stay's notes into n-gram ids.

    Parameters
    ----------
    n_buckets : int, default 16384
    ngram_max : int, default 2
    max_tokens : int, default 256
    """

    _fitted = ("fitted_",)

    def __init__(self, n_buckets: int = 16384, ngram_max: int = 2, max_tokens: int = 256):
        self.n_buckets = n_buckets
        self.ngram_max = ngram_max
        self.max_tokens = max_tokens

    def fit(self, cohort: Cohort, stay_ids: Sequence[str]) -> TextTransformer:
        if self.n_buckets < 2 or self.ngram_max < 1 or self.max_tokens < 1:
            raise ValueError("TextTransformer needs n_buckets >= 2, ngram_max >= 1 and max_tokens >= 1.")
        self.fitted_ = True
        return self

    def transform(self, cohort: Cohort, stay_ids: Sequence[str]) -> np.ndarray:
        """``[len(stay_ids), max_tokens]`` int64 ids (0 = padding; a stay without notes is all zeros)."""
        self._check_fitted()
        stay_ids = [str(s) for s in stay_ids]
        notes = cohort.observable("notes", stay_ids).sort_values(["stay_id", "time"])
        joined = notes.groupby("stay_id", sort=False)["text"].agg(" ".join)
        out = np.zeros((len(stay_ids), self.max_tokens), dtype=np.int64)
        position = {s: i for i, s in enumerate(stay_ids)}
        for stay, text in joined.items():
            ids = hash_ngrams(text, self.n_buckets, self.ngram_max)[-self.max_tokens :]
            out[position[stay], : len(ids)] = ids
        return out
