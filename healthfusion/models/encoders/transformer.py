"""Transformer encoder for gridded ICU time series, with pooling over time; a drop-in for the LSTM encoder.

The input at each step is ``concat(ts_values, ts_mask[, ts_delta])`` (``[B, T, 2V]`` or ``[B, T, 3V]``), as for
:class:`~healthfusion.models.encoders.lstm.LSTMEncoder`. Each step is projected linearly to ``d_model``, a fixed
sinusoidal encoding of the step index (Vaswani et al. 2017: ``sin(t / 10000^(2i/d))`` and ``cos`` on alternate
channels; the grid is regular, so the index is the time in units of the featurizer's ``step``) is added, and
``num_layers`` pre-norm self-attention layers (``torch.nn.TransformerEncoder``) run over the sequence followed by a
final layer norm. Sequences are padded at the end; ``ts_lengths`` gives the real lengths. Padded steps are zeroed
before the projection and excluded as keys through ``src_key_padding_mask``, so they never influence the output, and
they get zero pooling weight. The output and weights are those of the LSTM encoder, so the hybrid model, the
explainers and the attention plots work with either.

Example::

    enc = TransformerEncoder(TransformerEncoderConfig(n_variables=5, d_model=16, num_heads=4))
    feats, attn = enc(values, mask, delta, lengths)  # [B, 16], [B, T]; attn rows sum to 1, 0 on padding
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Discriminator, Field, Tag, model_validator
from torch import nn

from healthfusion.models.base import ModelConfig
from healthfusion.models.encoders.lstm import LSTMEncoderConfig, series_inputs, step_weights


class TransformerEncoderConfig(ModelConfig):
    """Config of :class:`TransformerEncoder`.

    Attributes
    ----------
    n_variables : int
        Number of time-series variables V. Required.
    d_model : int, default 32
        Width of every step's representation; ``out_dim = d_model``.
    num_layers : int, default 2
        Self-attention layers.
    num_heads : int, default 4
        Attention heads; must divide ``d_model``.
    dim_feedforward : int, optional
        Width of each layer's feed-forward block; ``None`` (default) means ``2 * d_model``.
    dropout : float, default 0.1
        Dropout inside the layers (attention weights, feed-forward, residual branches).
    use_delta : bool, default True
        Feed ``ts_delta`` (time since last observation) as well as values and mask.
    pooling : "attention" | "last" | "mean", default "attention"
        ``attention``: additive attention ``v^T tanh(W h_t + b)`` softmaxed over real steps; ``last``: the output
        at the last real step; ``mean``: mean over real steps (as :class:`LSTMEncoderConfig`).
    attention_dim : int, default 32
        Width of the additive attention's hidden layer.

    Raises
    ------
    pydantic.ValidationError (a ValueError)
        ``num_heads`` does not divide ``d_model``.
    """

    encoder: Literal["transformer"] = "transformer"
    n_variables: int = Field(ge=1)
    d_model: int = Field(default=32, ge=1)
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    dim_feedforward: int | None = Field(default=None, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    use_delta: bool = True
    pooling: Literal["attention", "last", "mean"] = "attention"
    attention_dim: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerEncoderConfig:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must divide d_model={self.d_model}; choose d_model as a multiple of "
                f"num_heads (e.g. {self.num_heads * max(1, round(self.d_model / self.num_heads))}) or another "
                "num_heads."
            )
        return self


def sinusoidal_encoding(steps: int, width: int, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | None = None) -> torch.Tensor:
    """``[steps, width]`` fixed encoding of the step index t: channel ``2i`` is ``sin(t / 10000^(2i/width))`` and
    channel ``2i + 1`` the ``cos`` of the same angle (an odd ``width`` drops the last cosine)."""
    position = torch.arange(steps, dtype=torch.float64, device=device)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / width))
    angles = position * freq[None, :]
    enc = torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).reshape(steps, -1)[:, :width]
    return enc.to(dtype)


class TransformerEncoder(nn.Module):
    """Time series -> (feature vector, weights over time steps), by self-attention over the steps.

    Shapes
    ------
    forward(values [B, T, V], mask [B, T, V], delta [B, T, V] or None, lengths [B] int or None)
        -> (features [B, d_model], weights [B, T])

    ``weights`` always sum to 1 over the real steps of each row and are exactly 0 on padding: the additive
    attention's softmax for ``pooling="attention"``, one-hot on the last real step for ``"last"`` and uniform for
    ``"mean"``. ``lengths=None`` means every row has T real steps. The layers are built with
    ``enable_nested_tensor=False``, so evaluation mode computes on the padded tensor like training mode does.

    Raises
    ------
    ValueError
        In ``forward``: wrong shapes, ``delta`` missing while ``use_delta`` is set, or a length outside ``1..T``.
    """

    def __init__(self, config: TransformerEncoderConfig):
        super().__init__()
        self.config = config
        n_inputs = config.n_variables * (3 if config.use_delta else 2)
        self.input_proj = nn.Linear(n_inputs, config.d_model)
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.num_heads,
            dim_feedforward=config.dim_feedforward or 2 * config.d_model,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(
            layer, config.num_layers, norm=nn.LayerNorm(config.d_model), enable_nested_tensor=False
        )
        self.out_dim = config.d_model
        if config.pooling == "attention":
            self.attn_proj = nn.Linear(self.out_dim, config.attention_dim)
            self.attn_score = nn.Linear(config.attention_dim, 1, bias=False)

    def forward(
        self,
        values: torch.Tensor,
        mask: torch.Tensor,
        delta: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        named, lengths = series_inputs(values, mask, delta, lengths, n_variables=self.config.n_variables,
                                       use_delta=self.config.use_delta, owner="TransformerEncoder")
        x = torch.cat(list(named.values()), dim=-1)
        steps = x.shape[1]
        valid = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]  # [B, T]
        x = x.masked_fill(~valid[:, :, None], 0.0)  # padded values never reach the network, whatever they hold
        h = self.input_proj(x) + sinusoidal_encoding(steps, self.out_dim, dtype=x.dtype, device=x.device)
        out = self.layers(h, src_key_padding_mask=~valid)  # True = padding, ignored as a key
        out = out.masked_fill(~valid[:, :, None], 0.0)  # [B, T, d_model], 0 on padding
        weights = step_weights(out, valid, lengths, self.config.pooling, getattr(self, "attn_proj", None),
                               getattr(self, "attn_score", None))
        features = torch.bmm(weights.unsqueeze(1), out).squeeze(1)
        return features, weights


def _ts_encoder_kind(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("encoder", "lstm")
    return getattr(value, "encoder", "lstm")


#: A time-series encoder config chosen by its ``encoder`` key: ``"lstm"`` (also when the key is absent, as in
#: configs saved before the Transformer existed) or ``"transformer"``; an unknown value names the choices.
TimeSeriesEncoderConfig = Annotated[
    Annotated[LSTMEncoderConfig, Tag("lstm")] | Annotated[TransformerEncoderConfig, Tag("transformer")],
    Discriminator(_ts_encoder_kind),
]
