"""Clinical notes -> hashed word n-gram ids for an embedding-bag text encoder.

Text is cleaned (lower-cased, digits collapsed to ``0``, punctuation to spaces), split into words, and every word
n-gram is hashed (CRC32, stable across runs and machines) into ``n_buckets`` ids. Id 0 pads. Only notes observable
at the prediction time are used; a stay's notes are concatenated in time order and the last ``max_tokens``
n-grams are kept.

With the ``text`` extra installed, :class:`HFTokenTransformer` instead tokenizes the notes with the tokenizer of a
local Hugging Face model folder (ids + attention mask) for
:class:`~healthfusion.models.encoders.text_hf.HFTextEncoder`; nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.features.base import FeatureTransformer
from healthfusion.optional import require

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


def stay_notes(cohort: Cohort, stay_ids: Sequence[str], sep: str) -> pd.Series:
    """Each stay's notes observable at its prediction time, joined with ``sep`` in time order; indexed by
    stay_id, a stay without notes absent."""
    notes = cohort.observable("notes", stay_ids).sort_values(["stay_id", "time"])
    return notes.groupby("stay_id", sort=False)["text"].agg(lambda s: sep.join(map(str, s)))


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
        joined = stay_notes(cohort, stay_ids, " ")
        out = np.zeros((len(stay_ids), self.max_tokens), dtype=np.int64)
        position = {s: i for i, s in enumerate(stay_ids)}
        for stay, text in joined.items():
            ids = hash_ngrams(text, self.n_buckets, self.ngram_max)[-self.max_tokens :]
            out[position[stay], : len(ids)] = ids
        return out


# --- local Hugging Face tokenizers (the ``text`` extra) --------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


class LocalModelError(ValueError):
    """A local Hugging Face model folder is missing or lacks the files a tokenizer or model needs."""


def import_transformers():
    """The ``transformers`` module, imported on first use with the hub switched off (``HF_HUB_OFFLINE=1``,
    ``TRANSFORMERS_OFFLINE=1`` unless already set); loaders also pass ``local_files_only=True``.

    Raises
    ------
    ImportError
        If ``transformers`` is not installed, with the install command of the ``text`` extra.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return require("transformers", extra="text",
                   needed_for="Local Hugging Face text encoders (the hashed n-gram text encoder works without it)")


def check_local_model_dir(path: str | os.PathLike, need: Sequence[str] = ("config", "tokenizer")) -> Path:
    """Check that ``path`` is a local folder in Hugging Face format holding what ``need`` names.

    ``"config"`` needs ``config.json``; ``"tokenizer"`` needs one of ``tokenizer.json``, ``vocab.txt``,
    ``vocab.json``, ``tokenizer.model`` or ``spiece.model``; ``"weights"`` needs ``model.safetensors`` or
    ``pytorch_model.bin`` (sharded weights through their index file).

    Raises
    ------
    LocalModelError
        Naming the folder and the missing files. A name that is not a folder is never looked up on a hub.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LocalModelError(f"Text model folder {str(folder)!r} does not exist or is not a folder; give the path of "
                              "a folder written by save_pretrained (nothing is downloaded).")
    wanted = {"config": ("config.json",), "tokenizer": _TOKENIZER_FILES,
              "weights": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                          "pytorch_model.bin.index.json")}
    missing = [f"{what} ({' or '.join(wanted[what])})" for what in need
               if not any((folder / name).is_file() for name in wanted[what])]
    if missing:
        raise LocalModelError(f"Text model folder {str(folder)!r} lacks {', '.join(missing)}; save both the model and "
                              "its tokenizer there with save_pretrained(folder).")
    return folder


class HFTokenTransformer(FeatureTransformer):
    """Tokenize each stay's notes with a local Hugging Face tokenizer into token ids and an attention mask.

    A stay's notes observable at the prediction time are joined in time order (as :class:`TextTransformer`
    does, without cleaning: the tokenizer does its own) and the first ``max_length`` tokens are kept,
    special tokens included; every row is padded to ``max_length``.

    Parameters
    ----------
    model_path : str
        Local folder with the tokenizer files (see :func:`check_local_model_dir`).
    max_length : int, default 128

    Attributes
    ----------
    vocab_size_ : int
        Size of the tokenizer's vocabulary (ids are below it).

    Raises
    ------
    LocalModelError, ImportError
        In ``fit``/``transform``: missing folder or files, or transformers not installed.
    """

    _fitted = ("vocab_size_",)

    def __init__(self, model_path: str, max_length: int = 128):
        self.model_path = model_path
        self.max_length = max_length

    def tokenizer(self):
        """The tokenizer loaded from ``model_path`` (offline; cached on the instance)."""
        if getattr(self, "_tokenizer", None) is None:
            folder = check_local_model_dir(self.model_path, need=("tokenizer",))
            self._tokenizer = import_transformers().AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return self._tokenizer

    def fit(self, cohort: Cohort, stay_ids: Sequence[str]) -> HFTokenTransformer:
        if self.max_length < 2:
            raise ValueError(f"HFTokenTransformer needs max_length >= 2; got {self.max_length}.")
        self.vocab_size_ = len(self.tokenizer())
        return self

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``{"ids": [N, max_length] int64, "mask": [N, max_length] int64}`` of ``texts``."""
        out = self.tokenizer()(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                               return_attention_mask=True)
        return {"ids": np.asarray(out["input_ids"], dtype=np.int64).reshape(len(texts), self.max_length),
                "mask": np.asarray(out["attention_mask"], dtype=np.int64).reshape(len(texts), self.max_length)}

    def transform(self, cohort: Cohort, stay_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """``{"ids", "mask"}`` as :meth:`encode` and ``"present"`` ``[N]`` bool (the stay has a non-empty note);
        a stay without notes is tokenized as the empty string."""
        self._check_fitted()
        stay_ids = [str(s) for s in stay_ids]
        joined = stay_notes(cohort, stay_ids, "\n")
        texts = [joined.get(s, "") for s in stay_ids]
        return {**self.encode(texts), "present": np.array([bool(t.strip()) for t in texts])}
