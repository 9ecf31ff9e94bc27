"""The transfer model: a bidirectional LSTM over the time series with learned embeddings of categorical clinical
variables and an MLP over numeric static features, a shared representation, a risk head and a domain classifier
behind a gradient-reversal layer (DANN).

Inputs follow :mod:`healthfusion.features.batch` (``ts_values``, ``ts_mask``, ``ts_delta``, ``ts_lengths``,
``static``) plus one key of its own:

=========================  ===================  ==============================================================
key                        shape / dtype        meaning
=========================  ===================  ==============================================================
``static_categorical``     [B, C] int64         level id of each embedded categorical variable, 0 = unknown
=========================  ===================  ==============================================================

Id 0 (a missing value or a level not seen when the levels were fitted) maps to a zero vector that is never
trained, so an unseen care unit adds nothing instead of noise.

The time-series encoder is the submodule ``ts_encoder`` (an :class:`~healthfusion.models.encoders.lstm.LSTMEncoder`);
fine-tuning can freeze it by name (``FinetuneConfig(strategy="linear_probe", modules=("ts_encoder",))``), and a pretrained encoder can be swapped in.

Example::

    config = TransferModelConfig(ts=LSTMEncoderConfig(n_variables=37, hidden_size=32, bidirectional=True),
                                 static_dim=6, categorical=(CategoricalEmbedding(name="Gender", n_levels=2),))
    model = TransferModel(config)
    out = model(batch)                                   # {"logits": [B], "embedding": [B, 32], ...}
    domain = model.domain_logits(out["embedding"], strength=0.5)   # [B]; gradients into the encoder reversed
    model.save_pretrained("runs/transfer/model")
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from healthfusion.features import batch as B
from healthfusion.models.base import ModelConfig, PretrainedModel, register_model
from healthfusion.models.encoders.lstm import LSTMEncoder, LSTMEncoderConfig

CATEGORICAL = "static_categorical"
"""Batch key of the ``[B, C]`` int64 level ids of the embedded categorical variables (0 = unknown)."""


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-strength`` in the backward pass (Ganin &
    Lempitsky 2015). ``strength`` >= 0.

    Raises
    ------
    ValueError
        If ``strength`` is negative.
    """
    if strength < 0:
        raise ValueError(f"Gradient-reversal strength must be >= 0, got {strength}.")
    return _ReverseGradient.apply(x, float(strength))


class GradientReversal(nn.Module):
    """:func:`reverse_gradient` as a module; ``strength`` is a plain attribute the training loop schedules."""

    def __init__(self, strength: float = 1.0):
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.strength)


class CategoricalEmbedding(ModelConfig):
    """One embedded categorical variable: ``n_levels`` known levels (ids 1..n_levels; 0 = unknown), ``dim`` wide."""

    name: str
    n_levels: int = Field(ge=1)
    dim: int = Field(default=4, ge=1)


class TransferModelConfig(ModelConfig):
    """Config of :class:`TransferModel`.

    Attributes
    ----------
    ts : LSTMEncoderConfig
        The sequence encoder (set ``bidirectional=True`` for the BiLSTM).
    static_dim : int, default 0
        Width F of the numeric ``static`` input (0: no static input).
    static_hidden : int, default 16
        Width of the static MLP layer.
    categorical : tuple of CategoricalEmbedding, default ()
        Embedded variables, in the column order of ``static_categorical``.
    hidden : int, default 32
        Width D of the shared representation (``embedding``) that DANN and MMD align.
    dropout : float, default 0.2
    domain_hidden : int, default 32
        Hidden width of the domain classifier.
    """

    ts: LSTMEncoderConfig
    static_dim: int = Field(default=0, ge=0)
    static_hidden: int = Field(default=16, ge=1)
    categorical: tuple[CategoricalEmbedding, ...] = ()
    hidden: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    domain_hidden: int = Field(default=32, ge=1)


@register_model("transfer_bilstm")
class TransferModel(PretrainedModel):
    """BiLSTM + embeddings + static MLP -> shared representation -> risk logit; registered as ``"transfer_bilstm"``.

    Shapes
    ------
    forward(batch) -> dict with
        ``logits``        [B] risk logit (sigmoid -> probability of the outcome)
        ``embedding``     [B, D] shared representation
        ``ts_attention``  [B, T] weights over time steps of the sequence pooling
    domain_logits(embedding [B, D], strength) -> [B] logit of "target domain"

    Raises
    ------
    ValueError
        In ``forward``: a missing input key, ``static`` or ``static_categorical`` of the wrong width, or a level id
        outside ``0..n_levels``.
    """

    config_class = TransferModelConfig
    config: TransferModelConfig

    def __init__(self, config: TransferModelConfig):
        super().__init__(config)
        self.ts_encoder = LSTMEncoder(config.ts)
        width = self.ts_encoder.out_dim
        self.static_encoder = None
        if config.static_dim:
            self.static_encoder = nn.Sequential(nn.Linear(config.static_dim, config.static_hidden), nn.ReLU())
            width += config.static_hidden
        self.embeddings = nn.ModuleList(
            nn.Embedding(c.n_levels + 1, c.dim, padding_idx=0) for c in config.categorical
        )
        width += sum(c.dim for c in config.categorical)
        self.fc = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, config.hidden), nn.ReLU())
        self.head = nn.Linear(config.hidden, 1)
        self.grl = GradientReversal(1.0)
        self.domain_classifier = nn.Sequential(
            nn.Linear(config.hidden, config.domain_hidden), nn.ReLU(), nn.Linear(config.domain_hidden, 1)
        )
        self.embedding_dim = config.hidden

    def _parts(self, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        missing = [k for k in (B.TS_VALUES, B.TS_MASK) if k not in batch]
        if self.config.static_dim and B.STATIC not in batch:
            missing.append(B.STATIC)
        if self.config.categorical and CATEGORICAL not in batch:
            missing.append(CATEGORICAL)
        if missing:
            raise ValueError(f"TransferModel needs batch key(s) {missing}; the batch has {sorted(batch)}. "
                             "Build the inputs with the feature pipeline the model was trained with.")
        feats, attention = self.ts_encoder(batch[B.TS_VALUES], batch[B.TS_MASK], batch.get(B.TS_DELTA),
                                           batch.get(B.TS_LENGTHS))
        parts = [feats]
        if self.static_encoder is not None:
            static = batch[B.STATIC]
            if static.dim() != 2 or static.shape[1] != self.config.static_dim:
                raise ValueError(f"static must be [B, {self.config.static_dim}], got {tuple(static.shape)}.")
            parts.append(self.static_encoder(static))
        if self.config.categorical:
            codes = batch[CATEGORICAL]
            n = len(self.config.categorical)
            if codes.dim() != 2 or codes.shape[1] != n or codes.is_floating_point():
                raise ValueError(f"{CATEGORICAL} must be [B, {n}] integer ids, got {tuple(codes.shape)} {codes.dtype}.")
            for j, (spec, emb) in enumerate(zip(self.config.categorical, self.embeddings, strict=True)):
                col = codes[:, j]
                if col.numel() and (int(col.min()) < 0 or int(col.max()) > spec.n_levels):
                    raise ValueError(f"{CATEGORICAL}[:, {j}] ({spec.name}) has ids outside 0..{spec.n_levels}: "
                                     f"min {int(col.min())}, max {int(col.max())}.")
                parts.append(emb(col))
        return parts, attention

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The shared representation ``[B, D]``."""
        parts, _ = self._parts(batch)
        return self.fc(torch.cat(parts, dim=1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        parts, attention = self._parts(batch)
        embedding = self.fc(torch.cat(parts, dim=1))
        return {"logits": self.head(embedding).squeeze(-1), "embedding": embedding, "ts_attention": attention}

    def domain_logits(self, embedding: torch.Tensor, strength: float | None = None) -> torch.Tensor:
        """Domain-classifier logit ``[B]`` (target = 1) of ``embedding`` seen through the gradient-reversal layer.

        ``strength`` (default: ``self.grl.strength``) scales the reversed gradient reaching the encoder; the
        classifier itself gets the ordinary gradient, so it learns to tell the domains apart while the encoder
        learns to confuse it.
        """
        if strength is not None:
            self.grl.strength = float(strength)
        return self.domain_classifier(self.grl(embedding)).squeeze(-1)
