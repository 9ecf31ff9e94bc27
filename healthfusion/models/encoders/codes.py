"""Bag-of-codes encoder: code ids -> mean of their embeddings (``nn.EmbeddingBag``, padding id 0).

Example::

    enc = CodesEncoder(CodesEncoderConfig(vocab_size=100, embedding_dim=16))
    enc(torch.tensor([[3, 7, 0], [0, 0, 0]])).shape  # torch.Size([2, 16]); the all-padding row is zeros
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from healthfusion.models.base import ModelConfig


class CodesEncoderConfig(ModelConfig):
    """Config of :class:`CodesEncoder`.

    Attributes
    ----------
    vocab_size : int
        Number of ids including the padding id 0 (valid ids are ``0 .. vocab_size - 1``). Required.
    embedding_dim : int, default 32
        Also the encoder's ``out_dim``.
    dropout : float, default 0.0
        Dropout on the pooled embedding.
    """

    encoder: Literal["bag"] = "bag"
    vocab_size: int = Field(ge=2)
    embedding_dim: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class IdBag(nn.Module):
    """``nn.EmbeddingBag`` (mean, padding id 0) over a padded ``[B, L]`` id matrix, with a clear range check.

    Shapes
    ------
    forward(ids [B, L] int64) -> [B, dim]; a row of only padding gives zeros.

    Raises
    ------
    ValueError
        In ``forward``, if ``ids`` is not 2-D integer or holds an id outside ``0 .. n_ids - 1``.
    """

    def __init__(self, n_ids: int, dim: int, what: str):
        super().__init__()
        self.what = what
        self.bag = nn.EmbeddingBag(n_ids, dim, mode="mean", padding_idx=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.check(ids)
        return self.bag(ids)

    def check(self, ids: torch.Tensor) -> None:
        """Raise the ``ValueError`` of :meth:`forward` if ``ids`` is not ``[B, L]`` integer ids in range."""
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{self.what} expects ids [B, L] int64, got {tuple(ids.shape)} {ids.dtype}.")
        n_ids = self.bag.num_embeddings
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_ids):
            raise ValueError(
                f"{self.what} got ids in [{int(ids.min())}, {int(ids.max())}] but accepts 0..{n_ids - 1} "
                "(0 = padding); build the model with the vocabulary size of the fitted feature pipeline."
            )


class CodesEncoder(nn.Module):
    """Code ids -> mean code embedding.

    Shapes
    ------
    forward(codes [B, L] int64, 0 = padding) -> [B, embedding_dim]

    Raises
    ------
    ValueError
        In ``forward``, on a non 2-D input or ids outside ``0 .. vocab_size - 1``.
    """

    def __init__(self, config: CodesEncoderConfig):
        super().__init__()
        self.config = config
        self.embed = IdBag(config.vocab_size, config.embedding_dim, "CodesEncoder")
        self.dropout = nn.Dropout(config.dropout)
        self.out_dim = config.embedding_dim

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embed(codes))
