"""The hybrid multimodal model: one encoder per configured modality, a missing-aware fusion, FC layers, a head.

Example::

    config = HybridConfig(
        ts=LSTMEncoderConfig(n_variables=12, hidden_size=32),
        static=MLPEncoderConfig(in_dim=20),
        fusion="attention",
    )
    model = HybridModel(config)
    out = model(batch)          # batch: dict of tensors, see healthfusion.features.batch
    out["logits"].shape         # [B] for a binary head
    model.save_pretrained("runs/m1")
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from healthfusion.features import batch as B
from healthfusion.models.base import ModelConfig, PretrainedModel, register_model
from healthfusion.models.encoders import (
    CNNEncoder,
    CNNEncoderConfig,
    CodesEncoder,
    CodesEncoderConfig,
    LSTMEncoder,
    MLPEncoder,
    MLPEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)
from healthfusion.models.encoders.mlp import mlp_layers
from healthfusion.models.encoders.text_hf import HFTextEncoder, HFTextEncoderConfig
from healthfusion.models.encoders.transformer import (
    TimeSeriesEncoderConfig,
    TransformerEncoder,
    TransformerEncoderConfig,
)
from healthfusion.models.fusion import FusionKind, build_fusion
from healthfusion.models.heads import Head, HeadKind, check_head

_ENCODERS: dict[str, type[nn.Module]] = {
    "ts": LSTMEncoder,
    "static": MLPEncoder,
    "codes": CodesEncoder,
    "text": TextEncoder,
    "image": CNNEncoder,
}


def _build_encoder(modality: str, config: ModelConfig) -> nn.Module:
    if isinstance(config, HFTextEncoderConfig):
        return HFTextEncoder(config)
    if isinstance(config, TransformerEncoderConfig):
        return TransformerEncoder(config)
    return _ENCODERS[modality](config)


_INPUT_KEY = {"ts": B.TS_VALUES, "static": B.STATIC, "codes": B.CODES, "text": B.TEXT, "image": B.IMAGE}


class HybridConfig(ModelConfig):
    """Config of :class:`HybridModel`. A modality is used when its encoder config is set; input sizes live there.

    Attributes
    ----------
    ts : LSTMEncoderConfig or TransformerEncoderConfig, optional
        Time series (``n_variables`` = V): an LSTM (``encoder: lstm``) or a Transformer (``encoder: transformer``).
    static : MLPEncoderConfig, optional
        Static features (``in_dim`` = F).
    codes : CodesEncoderConfig, optional
        Code ids (``vocab_size`` including padding 0).
    text : TextEncoderConfig or HFTextEncoderConfig, optional
        Hashed n-gram ids (``n_buckets`` including padding 0), or a local Hugging Face model (``encoder: hf``,
        ``path``; token ids in ``text`` and the attention mask in ``text_mask``).
    image : CNNEncoderConfig, optional
        Images (``in_channels``, ``image_size``).
    fusion : "concat" | "gated" | "attention", default "concat"
    fusion_dim : int, default 32
        Width of the gated/attention fusion output (unused by concat).
    fc_hidden : tuple of int, default (32,)
        FC layers after fusion, each Linear -> ReLU -> Dropout; may be empty.
    dropout : float, default 0.1
        Dropout after each FC layer.
    head : "binary" | "multiclass" | "multilabel" | "regression", default "binary"
    n_outputs : int, default 1
        Classes or labels K; 1 for binary and regression.

    Raises
    ------
    pydantic.ValidationError
        No modality configured, unknown key, or a head/``n_outputs`` mismatch.
    """

    ts: TimeSeriesEncoderConfig | None = None
    static: MLPEncoderConfig | None = None
    codes: CodesEncoderConfig | None = None
    text: TextEncoderConfig | HFTextEncoderConfig | None = None
    image: CNNEncoderConfig | None = None
    fusion: FusionKind = "concat"
    fusion_dim: int = Field(default=32, ge=1)
    fc_hidden: tuple[PositiveInt, ...] = (32,)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    head: HeadKind = "binary"
    n_outputs: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> HybridConfig:
        if not self.modalities:
            raise ValueError(f"HybridConfig needs at least one modality config among {', '.join(B.MODALITIES)}.")
        check_head(self.head, self.n_outputs)
        return self

    @property
    def modalities(self) -> tuple[str, ...]:
        """Configured modalities in :data:`healthfusion.features.batch.MODALITIES` order."""
        return tuple(m for m in B.MODALITIES if getattr(self, m) is not None)


@register_model("hybrid")
class HybridModel(PretrainedModel):
    """Multimodal risk model; registered as ``"hybrid"``.

    Each configured modality is encoded only for the rows where it is present (flag ``<m>_present``; a flag
    missing from the batch means present for every row), so absent inputs never influence any output, also in
    training mode with batch norm. Fusion then combines the embeddings (see :mod:`healthfusion.models.fusion`).

    Parameters
    ----------
    config : HybridConfig

    Shapes
    ------
    forward(batch) -> dict with
        ``logits``            [B] (binary, regression) or [B, K] (multiclass, multilabel)
        ``embedding``         [B, D] fused representation after the FC layers (D = ``embedding_dim``)
        ``ts_attention``      [B, T] weights over time steps, when ts is configured (rows without ts: zeros)
        ``modality_weights``  [B, M] for gated and attention fusion, M in ``modalities`` order

    Raises
    ------
    ValueError
        In ``forward``/``encode``: a configured modality's input key is missing from the batch, inputs disagree
        on B, a presence flag is not ``[B]`` bool, a sample has no modality present (positions named), or an
        encoder rejects its input (wrong width, out-of-range ids, bad lengths).
    """

    config_class = HybridConfig
    config: HybridConfig

    def __init__(self, config: HybridConfig):
        super().__init__(config)
        self.modalities = config.modalities
        self.encoders = nn.ModuleDict({m: _build_encoder(m, getattr(config, m)) for m in self.modalities})
        dims = {m: self.encoders[m].out_dim for m in self.modalities}
        self.fusion = build_fusion(config.fusion, dims, config.fusion_dim)
        self.fc = mlp_layers(self.fusion.out_dim, config.fc_hidden, config.dropout)
        self.embedding_dim = config.fc_hidden[-1] if config.fc_hidden else self.fusion.out_dim
        self.head = Head(self.embedding_dim, config.head, config.n_outputs)

    # --- batch handling -----------------------------------------------------------------------------------------
    def _batch_size(self, batch: dict[str, torch.Tensor]) -> int:
        sizes = {}
        for m in self.modalities:
            key = _INPUT_KEY[m]
            if key not in batch:
                raise ValueError(
                    f"HybridModel uses modality {m!r} but the batch has no {key!r} (keys: {', '.join(sorted(batch))}); "
                    "pass the feature pipeline that the model was trained with."
                )
            sizes[key] = batch[key].shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Batch inputs disagree on the number of samples: {sizes}.")
        return next(iter(sizes.values()))

    def presence(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Presence flags ``[B]`` bool of every configured modality (all True where the batch has no flag).

        Raises
        ------
        ValueError
            If an input key is missing or a flag is not ``[B]`` bool.
        """
        size = self._batch_size(batch)
        out = {}
        for m in self.modalities:
            key = B.present_key(m)
            device = batch[_INPUT_KEY[m]].device
            flag = batch.get(key)
            if flag is None:
                out[m] = torch.ones(size, dtype=torch.bool, device=device)
            elif flag.dtype != torch.bool or flag.shape != (size,):
                raise ValueError(
                    f"{key} must be [{size}] bool, got {tuple(flag.shape)} {flag.dtype}; convert it with .bool()."
                )
            else:
                out[m] = flag
        return out

    def _encode_rows(self, m: str, batch: dict[str, torch.Tensor], rows: torch.Tensor | None):
        """Run encoder ``m`` on ``rows`` (None = all) of the batch; returns (features, ts attention or None)."""

        def take(key: str) -> torch.Tensor | None:
            value = batch.get(key)
            return value if value is None or rows is None else value[rows]

        encoder = self.encoders[m]
        if m == "ts":
            return encoder(take(B.TS_VALUES), take(B.TS_MASK), take(B.TS_DELTA), take(B.TS_LENGTHS))
        if isinstance(encoder, HFTextEncoder):
            return encoder(take(B.TEXT), take(B.TEXT_MASK)), None
        return encoder(take(_INPUT_KEY[m])), None

    def _encode(self, batch: dict[str, torch.Tensor]):
        present = self.presence(batch)
        size = self._batch_size(batch)
        dtype = self.head.linear.weight.dtype
        embeddings: dict[str, torch.Tensor] = {}
        ts_attention = None
        for m in self.modalities:
            flag = present[m]
            device = flag.device
            n_present = int(flag.sum())
            rows = None if n_present == size else flag.nonzero().flatten()
            dim = self.encoders[m].out_dim
            if n_present == 0:
                feats, attn = torch.zeros(size, dim, dtype=dtype, device=device), None
            else:
                feats, attn = self._encode_rows(m, batch, rows)
                if rows is not None:
                    feats = feats.new_zeros(size, dim).index_copy(0, rows, feats)
                    attn = None if attn is None else attn.new_zeros(size, attn.shape[1]).index_copy(0, rows, attn)
            if m == "ts":
                steps = batch[B.TS_VALUES].shape[1]
                ts_attention = attn if attn is not None else torch.zeros(size, steps, dtype=dtype, device=device)
            embeddings[m] = feats
        return embeddings, present, ts_attention

    # --- public API ---------------------------------------------------------------------------------------------
    def encode(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-modality embeddings ``{m: [B, D_m]}`` for the configured modalities (rows where ``m`` is absent: 0).

        Raises
        ------
        ValueError
            As :meth:`forward`, except the no-modality check.
        """
        return self._encode(batch)[0]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        embeddings, present, ts_attention = self._encode(batch)
        fused, weights = self.fusion(embeddings, present)
        embedding = self.fc(fused)
        out: dict[str, Any] = {"logits": self.head(embedding), "embedding": embedding}
        if ts_attention is not None:
            out["ts_attention"] = ts_attention
        if weights is not None:
            out["modality_weights"] = weights
        return out
