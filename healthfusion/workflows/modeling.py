"""Glue shared by the jobs that train models: a hybrid config sized from a fitted featurizer, and the engineered
features the classical baselines use on the same split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.plausibility import plausible_mask
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.features.summary import summary_features
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


def tabular_features(cohort: Cohort, featurizer: CohortFeaturizer, stay_ids: Sequence[str]) -> pd.DataFrame:
    """Engineered features for classical models: per-variable last/mean/min/max/std/count of each observable
    series (plausible values only, over the featurizer's window) plus the encoded static features."""
    stay_ids = [str(s) for s in stay_ids]
    blocks = []
    tr = featurizer.transformers_.get("ts")
    if tr is not None:
        events = cohort.observable("events", stay_ids)
        pred = cohort.stays.set_index("stay_id")["prediction_time"]
        events = events[events["time"].to_numpy() >= events["stay_id"].map(pred).to_numpy() - tr.hours]
        events = events[plausible_mask(events).to_numpy()]
        blocks.append(summary_features(events, stay_ids, tr.variables_).reset_index(drop=True))
    st = featurizer.transformers_.get("static")
    if st is not None:
        blocks.append(pd.DataFrame(st.transform(cohort, stay_ids), columns=st.feature_names_))
    if not blocks:
        raise ValueError("Classical baselines need the 'ts' or 'static' modality.")
    out = pd.concat(blocks, axis=1)
    out.index = pd.Index(stay_ids, name="stay_id")
    return out.astype(np.float64)
