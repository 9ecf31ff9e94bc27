"""Features of a transfer run: the pipeline fitted on source stays, categorical embedding levels, the model config."""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.domains import DomainSplit
from healthfusion.features import batch as B
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.features.dataset import ArrayDataset
from healthfusion.features.tabular import StaticTransformer
from healthfusion.features.timeseries import TimeSeriesTransformer
from healthfusion.models.encoders.lstm import LSTMEncoderConfig
from healthfusion.models.transfer import CATEGORICAL, CategoricalEmbedding, TransferModelConfig
from healthfusion.workflows.modeling import load_pretrained, use_pretrained_preprocessing
from healthfusion.workflows.transfer.config import TransferConfig


class CategoryCoder:
    """Categorical static columns -> ``[N, C]`` int64 level ids (1..K in sorted level order; 0 = missing/unseen).

    Levels are learned from the stays passed to :meth:`fit` (features only, no labels).
    """

    def __init__(self, columns: list[str]):
        self.columns = list(columns)

    def fit(self, cohort: Cohort, stay_ids: list[str]) -> CategoryCoder:
        frame = self._frame(cohort, stay_ids)
        self.levels_ = {c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in self.columns}
        empty = [c for c, levels in self.levels_.items() if not levels]
        if empty:
            raise ValueError(f"Embedded column(s) {empty} have no value in the fitting stays; remove them from "
                             "features.embed.")
        return self

    def _frame(self, cohort: Cohort, stay_ids: list[str]) -> pd.DataFrame:
        static = cohort.static
        missing = [c for c in self.columns if static is None or c not in static.columns]
        if missing:
            have = [] if static is None else [c for c in static.columns if c != "stay_id"]
            raise ValueError(f"features.embed names {missing}, not static columns of the cohort ({have}).")
        return static.set_index("stay_id").reindex(stay_ids)[self.columns]

    def transform(self, cohort: Cohort, stay_ids: list[str]) -> np.ndarray:
        frame = self._frame(cohort, stay_ids)
        out = np.zeros((len(stay_ids), len(self.columns)), dtype=np.int64)
        for j, c in enumerate(self.columns):
            values = frame[c].astype("string").astype(object)
            out[:, j] = pd.Index(self.levels_[c]).get_indexer(values.where(values.notna(), None)) + 1
        return out

    def get_state(self) -> dict:
        return {"columns": self.columns, "levels": self.levels_}


def featurize(config: TransferConfig, cohort: Cohort, split: DomainSplit):
    """Fit the feature pipeline on the source stays (features only) and build arrays for every domain stay."""
    feats = config.features
    types = cohort.meta.feature_types
    static_cols = [c for c in types if c not in set(feats.embed) | set(feats.exclude)]
    transformers = {"ts": TimeSeriesTransformer(hours=feats.hours, step=feats.step, min_count=feats.min_count)}
    modalities = ["ts"]
    if static_cols:
        transformers["static"] = StaticTransformer(columns=static_cols)
        modalities.append("static")
    featurizer = CohortFeaturizer(modalities, label=config.data.label, transformers=transformers)
    featurizer.fit(cohort, split.source_ids)
    use_pretrained_preprocessing(featurizer, pretrained_ts(config))
    coder = CategoryCoder(feats.embed).fit(cohort, split.source_ids + split.target_ids) if feats.embed else None
    ids = split.source_ids + split.target_ids
    data = featurizer.transform(cohort, ids)
    if coder is not None:
        data = data.with_arrays(**{CATEGORICAL: coder.transform(cohort, ids)})
    keep = [k for k in data if k in (B.TS_VALUES, B.TS_MASK, B.TS_DELTA, B.TS_LENGTHS, B.STATIC, CATEGORICAL,
                                     B.TARGET, B.INDEX)]
    data = ArrayDataset({k: data[k] for k in keep}, meta={"stay_ids": ids})
    return featurizer, coder, data


def pretrained_ts(config: TransferConfig) -> dict:
    """``{"ts": (encoder, card, preprocessing)}`` of ``model.pretrained_ts`` (empty without one).

    Raises
    ------
    ValueError
        An unknown name or unreadable folder, or an encoder that is not an LSTM.
    """
    spec = config.model
    if spec.pretrained_ts is None:
        return {}
    loaded = load_pretrained({"ts": spec.pretrained_ts}, spec.pretrained_root)
    if not isinstance(loaded["ts"][0].config, LSTMEncoderConfig):
        raise ValueError(f"model.pretrained_ts = {spec.pretrained_ts!r} is not an LSTM encoder; the transfer model's "
                         "time-series encoder is an LSTM.")
    return loaded


def model_config(config: TransferConfig, featurizer: CohortFeaturizer, coder: CategoryCoder | None):
    dims = featurizer.input_dims()
    spec = config.model
    categorical = () if coder is None else tuple(
        CategoricalEmbedding(name=c, n_levels=len(coder.levels_[c]), dim=spec.embedding_dim) for c in coder.columns)
    pretrained = pretrained_ts(config)
    ts = pretrained["ts"][0].config if pretrained else LSTMEncoderConfig(
        n_variables=dims["n_variables"], hidden_size=spec.hidden, num_layers=spec.lstm_layers,
        bidirectional=spec.bidirectional, pooling=spec.pooling)
    if ts.n_variables != dims["n_variables"]:
        raise ValueError(f"The pretrained ts encoder expects {ts.n_variables} variables but the features give "
                         f"{dims['n_variables']}.")
    return TransferModelConfig(
        ts=ts,
        static_dim=dims.get("static_dim", 0), static_hidden=spec.static_hidden, categorical=categorical,
        hidden=spec.hidden, dropout=spec.dropout)


