"""Multi-layer perceptron encoder for static tabular features.

Example::

    enc = MLPEncoder(MLPEncoderConfig(in_dim=10, hidden_sizes=(32, 16)))
    enc(torch.zeros(4, 10)).shape  # torch.Size([4, 16])
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from healthfusion.models.base import ModelConfig


def mlp_layers(in_dim: int, hidden_sizes: tuple[int, ...], dropout: float) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout`` for each size in ``hidden_sizes`` (an empty tuple gives an identity)."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_dim, size), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = size
    return nn.Sequential(*layers)


class MLPEncoderConfig(ModelConfig):
    """Config of :class:`MLPEncoder`.

    Attributes
    ----------
    in_dim : int
        Number of static features F. Required.
    hidden_sizes : tuple of int, default (32,)
        At least one layer; the last size is ``out_dim``.
    dropout : float, default 0.0
        Dropout after each layer.
    """

    encoder: Literal["mlp"] = "mlp"
    in_dim: int = Field(ge=1)
    hidden_sizes: tuple[PositiveInt, ...] = Field(default=(32,), min_length=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class MLPEncoder(nn.Module):
    """Static features -> feature vector.

    Shapes
    ------
    forward(static [B, F] float) -> [B, hidden_sizes[-1]]

    Raises
    ------
    ValueError
        In ``forward``, if the input is not ``[B, in_dim]``.
    """

    def __init__(self, config: MLPEncoderConfig):
        super().__init__()
        self.config = config
        self.layers = mlp_layers(config.in_dim, config.hidden_sizes, config.dropout)
        self.out_dim = config.hidden_sizes[-1]

    def forward(self, static: torch.Tensor) -> torch.Tensor:
        if static.dim() != 2 or static.shape[1] != self.config.in_dim:
            raise ValueError(
                f"MLPEncoder expects static [B, {self.config.in_dim}], got {tuple(static.shape)}; "
                "the model's static in_dim must match the feature pipeline's output width."
            )
        return self.layers(static)
