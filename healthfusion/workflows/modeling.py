"""Glue shared by the jobs that train models: a hybrid config sized from a fitted featurizer, and the engineered
features the classical baselines use on the same split."""

from __future__ import annotations

from healthfusion.features.compose import CohortFeaturizer
from healthfusion.models.encoders import (
    CNNEncoderConfig,
    CodesEncoderConfig,
    LSTMEncoderConfig,
    MLPEncoderConfig,
    TextEncoderConfig,
)
from healthfusion.models.hybrid import HybridConfig


def hybrid_config(
    featurizer: CohortFeaturizer,
    *,
    fusion: str = "concat",
    hidden: int = 32,
    lstm_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.1,
    head: str = "binary",
    n_outputs: int = 1,
) -> HybridConfig:
    """A :class:`HybridConfig` whose encoders match the fitted ``featurizer``'s modalities and input sizes."""
    dims = featurizer.input_dims()
    enc = {}
    if "ts" in featurizer.transformers_:
        enc["ts"] = LSTMEncoderConfig(n_variables=dims["n_variables"], hidden_size=hidden, num_layers=lstm_layers,
                                      bidirectional=bidirectional, dropout=dropout if lstm_layers > 1 else 0.0)
    if "static" in featurizer.transformers_:
        enc["static"] = MLPEncoderConfig(in_dim=max(dims["static_dim"], 1), hidden_sizes=(hidden,), dropout=dropout)
    if "codes" in featurizer.transformers_:
        enc["codes"] = CodesEncoderConfig(vocab_size=dims["code_vocab"], embedding_dim=hidden, dropout=dropout)
    if "text" in featurizer.transformers_:
        enc["text"] = TextEncoderConfig(n_buckets=dims["text_buckets"], embedding_dim=hidden, hidden_sizes=(hidden,),
                                        dropout=dropout)
    if "image" in featurizer.transformers_:
        enc["image"] = CNNEncoderConfig(in_channels=dims["image_channels"], image_size=dims["image_size"],
                                        out_dim=hidden, dropout=dropout)
    return HybridConfig(**enc, fusion=fusion, fusion_dim=hidden, fc_hidden=(hidden,), dropout=dropout, head=head,
                        n_outputs=n_outputs)
