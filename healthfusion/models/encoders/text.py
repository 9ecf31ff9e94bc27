"""Text encoder over hashed n-gram ids: ``nn.EmbeddingBag`` mean -> MLP.

The hashing of notes into bucket ids lives in the features layer; this module only sees the ids.

Example::

    enc = TextEncoder(TextEncoderConfig(n_buckets=1024, embedding_dim=16, hidden_sizes=(16,)))
    enc(torch.randint(0, 1024, (4, 50))).shape  # torch.Size([4, 16])
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from healthfusion.models.base import ModelConfig
from healthfusion.models.encoders.codes import IdBag
from healthfusion.models.encoders.mlp import mlp_layers


class TextEncoderConfig(ModelConfig):
    """Config of :class:`TextEncoder`.

    Attributes
    ----------
    n_buckets : int
        Number of hash buckets including the padding id 0. Required.
    embedding_dim : int, default 32
    hidden_sizes : tuple of int, default (32,)
        MLP after the bag; empty means ``out_dim = embedding_dim``.
    dropout : float, default 0.0
        Dropout after each MLP layer.
    """

    encoder: Literal["hashed_bag"] = "hashed_bag"
    n_buckets: int = Field(ge=2)
    embedding_dim: int = Field(default=32, ge=1)
    hidden_sizes: tuple[PositiveInt, ...] = (32,)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class TextEncoder(nn.Module):
    """Hashed n-gram ids -> feature vector.

    Shapes
    ------
    forward(text [B, L] int64, 0 = padding) -> [B, out_dim] with ``out_dim = (hidden_sizes or [embedding_dim])[-1]``

    Raises
    ------
    ValueError
        In ``forward``, on a non 2-D input or ids outside ``0 .. n_buckets - 1``.
    """

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.embed = IdBag(config.n_buckets, config.embedding_dim, "TextEncoder")
        self.mlp = mlp_layers(config.embedding_dim, config.hidden_sizes, config.dropout)
        self.out_dim = config.hidden_sizes[-1] if config.hidden_sizes else config.embedding_dim

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(text))
