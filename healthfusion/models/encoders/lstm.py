"""Stacked (optionally bidirectional) LSTM encoder for gridded ICU time series, with pooling over time.

The input at each step is ``concat(ts_values, ts_mask[, ts_delta])`` (``[B, T, 2V]`` or ``[B, T, 3V]``).
Sequences are padded at the end; ``ts_lengths`` gives the real lengths and the LSTM runs on a packed sequence,
so padded steps never influence the output (also for the backward direction) and get zero pooling weight.

With ``input_decay`` the carried-forward values first decay toward the training mean, as in GRU-D's input decay
(Che et al. 2018, Sci. Rep. 8:6085): ``x_hat = m * x + (1 - m) * gamma * x`` with a learned per-variable
``gamma = exp(-relu(w * delta + b))``. The featurizer standardises values, so the training mean is 0 and decaying
toward it is a multiplication by ``gamma``; observed values (``m = 1``) pass unchanged.

Example::

    enc = LSTMEncoder(LSTMEncoderConfig(n_variables=5, hidden_size=16))
    feats, attn = enc(values, mask, delta, lengths)  # [B, 16], [B, T]; attn rows sum to 1, 0 on padding
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from healthfusion.models.base import ModelConfig


def series_inputs(
    values: torch.Tensor,
    mask: torch.Tensor,
    delta: torch.Tensor | None,
    lengths: torch.Tensor | None,
    *,
    n_variables: int,
    use_delta: bool,
    owner: str,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Check a time-series encoder's inputs; returns ``({"ts_values", "ts_mask"[, "ts_delta"]}: [B, T, V], lengths)``.

    ``lengths`` comes back as ``[B]`` int64 (all ``T`` when None). ``owner`` names the encoder in the messages.

    Raises
    ------
    ValueError
        Wrong shapes, ``delta`` missing while ``use_delta`` is set, or a length outside ``1..T``.
    """
    v = n_variables
    if values.dim() != 3 or values.shape[2] != v:
        raise ValueError(
            f"{owner} expects ts_values [B, T, {v}], got {tuple(values.shape)}; "
            "the model's n_variables must match the feature pipeline's variables."
        )
    named = {"ts_values": values, "ts_mask": mask}
    if use_delta:
        if delta is None:
            raise ValueError(f"{owner} was configured with use_delta=True but got no ts_delta.")
        named["ts_delta"] = delta
    for name, part in named.items():
        if part.shape != values.shape:
            raise ValueError(f"{name} has shape {tuple(part.shape)}, expected {tuple(values.shape)} like ts_values.")
    batch, steps = values.shape[:2]
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.int64, device=values.device)
    if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"ts_lengths must be [{batch}] integer, got {tuple(lengths.shape)} {lengths.dtype}.")
    lengths = lengths.to(torch.int64)
    bad = ((lengths < 1) | (lengths > steps)).nonzero().flatten()
    if bad.numel():
        raise ValueError(
            f"ts_lengths must be in 1..{steps} where ts is present; rows {bad.tolist()[:10]} have "
            f"{lengths[bad].tolist()[:10]}. Mark empty series with ts_present=False."
        )
    return named, lengths


def step_weights(out: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor, pooling: str,
                 attn_proj: nn.Module | None = None, attn_score: nn.Module | None = None) -> torch.Tensor:
    """Pooling weights ``[B, T]`` over the encoded steps ``out`` ``[B, T, D]`` of a time-series encoder: they sum
    to 1 over the real steps (``valid`` ``[B, T]``, ``lengths`` ``[B]``) and are 0 on padding. ``"attention"``:
    additive attention ``attn_score(tanh(attn_proj(h_t)))`` softmaxed over the real steps; ``"mean"``: uniform;
    ``"last"``: one-hot on the last real step."""
    if pooling == "attention":
        scores = attn_score(torch.tanh(attn_proj(out))).squeeze(-1)
        return torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
    if pooling == "mean":
        return valid.to(out.dtype) / lengths[:, None].to(out.dtype)
    return nn.functional.one_hot(lengths - 1, valid.shape[1]).to(out.dtype)


class LSTMEncoderConfig(ModelConfig):
    """Config of :class:`LSTMEncoder`.

    Attributes
    ----------
    n_variables : int
        Number of time-series variables V. Required.
    hidden_size : int, default 32
        Per direction; ``out_dim = hidden_size * (2 if bidirectional else 1)``.
    num_layers : int, default 1
    bidirectional : bool, default False
    dropout : float, default 0.0
        Between stacked LSTM layers (ignored with one layer).
    use_delta : bool, default True
        Feed ``ts_delta`` (time since last observation) as well as values and mask.
    pooling : "attention" | "last" | "mean", default "attention"
        ``attention``: additive attention ``v^T tanh(W h_t + b)`` softmaxed over real steps; ``last``: the final
        hidden state of the last layer (each direction's own last real step); ``mean``: mean over real steps.
    attention_dim : int, default 32
        Width of the additive attention's hidden layer.
    input_decay : bool, default False
        Decay the carried-forward values (mask 0) toward the training mean (0 after standardisation) by a learned
        per-variable ``gamma = exp(-relu(w * delta + b))`` before the LSTM (GRU-D's input decay; the hidden state
        does not decay). Adds the parameters ``decay_weight`` and ``decay_bias`` ``[V]``, initialised to 1 and 0,
        so at the start a value carried over a whole window (``delta = 1``) keeps ``exp(-1)`` of itself.
        Requires ``use_delta``.

    Raises
    ------
    pydantic.ValidationError (a ValueError)
        ``input_decay`` without ``use_delta``.
    """

    encoder: Literal["lstm"] = "lstm"
    n_variables: int = Field(ge=1)
    hidden_size: int = Field(default=32, ge=1)
    num_layers: int = Field(default=1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    use_delta: bool = True
    pooling: Literal["attention", "last", "mean"] = "attention"
    attention_dim: int = Field(default=32, ge=1)
    input_decay: bool = False

    @model_validator(mode="after")
    def _decay_needs_delta(self) -> LSTMEncoderConfig:
        if self.input_decay and not self.use_delta:
            raise ValueError("input_decay=True needs the time since last observation; set use_delta=True.")
        return self


class LSTMEncoder(nn.Module):
    """Time series -> (feature vector, weights over time steps).

    Shapes
    ------
    forward(values [B, T, V], mask [B, T, V], delta [B, T, V] or None, lengths [B] int or None)
        -> (features [B, out_dim], weights [B, T])

    ``weights`` always sum to 1 over the real steps of each row and are exactly 0 on padding. For ``pooling="last"``
    they are one-hot on the last real step and for ``"mean"`` uniform, so explanation code can treat every
    pooling alike. ``lengths=None`` means every row has T real steps.

    Raises
    ------
    ValueError
        In ``forward``: wrong shapes, ``delta`` missing while ``use_delta`` is set, or a length outside ``1..T``.
    """

    def __init__(self, config: LSTMEncoderConfig):
        super().__init__()
        self.config = config
        n_inputs = config.n_variables * (3 if config.use_delta else 2)
        self.lstm = nn.LSTM(
            n_inputs,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.directions = 2 if config.bidirectional else 1
        self.out_dim = config.hidden_size * self.directions
        if config.input_decay:
            self.decay_weight = nn.Parameter(torch.ones(config.n_variables))
            self.decay_bias = nn.Parameter(torch.zeros(config.n_variables))
        if config.pooling == "attention":
            self.attn_proj = nn.Linear(self.out_dim, config.attention_dim)
            self.attn_score = nn.Linear(config.attention_dim, 1, bias=False)

    def _inputs(self, values, mask, delta, lengths) -> tuple[torch.Tensor, torch.Tensor]:
        named, lengths = series_inputs(values, mask, delta, lengths, n_variables=self.config.n_variables,
                                       use_delta=self.config.use_delta, owner="LSTMEncoder")
        if self.config.input_decay:
            named["ts_values"] = self.decayed_values(values, mask, delta)
        return torch.cat(list(named.values()), dim=-1), lengths

    def decayed_values(self, values: torch.Tensor, mask: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``m * x + (1 - m) * gamma * x`` with ``gamma = exp(-relu(w * delta + b))`` per variable, ``[B, T, V]``."""
        gamma = torch.exp(-torch.relu(self.decay_weight * delta + self.decay_bias))
        return mask * values + (1 - mask) * gamma * values

    def forward(
        self,
        values: torch.Tensor,
        mask: torch.Tensor,
        delta: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self._inputs(values, mask, delta, lengths)
        steps = x.shape[1]
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)  # [B, T, out_dim], 0 on padding
        valid = torch.arange(steps, device=x.device)[None, :] < lengths[:, None]  # [B, T]
        weights = step_weights(out, valid, lengths, self.config.pooling, getattr(self, "attn_proj", None),
                               getattr(self, "attn_score", None))
        if self.config.pooling == "last":  # the final state of the last layer, both directions
            features = h_n[-self.directions :].transpose(0, 1).reshape(x.shape[0], self.out_dim)
        else:
            features = torch.bmm(weights.unsqueeze(1), out).squeeze(1)
        return features, weights
