"""``healthfusion transfer``: source -> low-resource target transfer of a BiLSTM risk model, measured honestly.

One YAML config (:class:`TransferConfig`, unknown keys rejected) names the cohort, the domain split, the target
sizes, the seeds and the strategies. For every seed the protocol is:

1. split the target domain by patient into a **test** set (never used for training or model selection) and a
   training **pool**; split the source into training and validation stays;
2. pretrain the **source** model once (this is also the ``source_only`` strategy) and reuse it for every size;
3. for every target size ``n``: take the first ``n`` stays of a nested, stratified order of the pool as the labelled
   target set and split it into target-train and target-validation stays; run each strategy:

   ==================== ===================================================== ===============================
   strategy             trains on                                              early stopping on
   ==================== ===================================================== ===============================
   target_only          target-train                                           target-validation
   source_only          source-train (once per seed)                           source-validation
   pooled               source-train + target-train                            source- + target-validation
   finetune             source model, then target-train (all layers)           target-validation
   finetune_frozen      source model, then target-train, ``freeze`` fixed      target-validation
   dann                 as pooled + domain classifier behind a GRL             source- + target-validation
   mmd                  as pooled + multi-kernel MMD between the domains       source- + target-validation
   finetune_dann_mmd    source model, then target-train + DANN + MMD           target-validation
   ==================== ===================================================== ===============================

   DANN and MMD align source-train stays with the whole target pool (features only, no labels).
4. score the target test set: AUROC, AUPRC, accuracy, precision, recall, F1, Brier with bootstrap 95% CIs.

The run folder holds ``config.yaml``, ``results.csv`` (one row per seed x size x strategy), ``summary.csv`` (mean and
a t-interval over seeds), ``gains.csv`` (each adaptation strategy minus the better of source-only and pooled, paired
by seed), ``learning_curve.png``, ``shift.json``/``shift.csv`` (domain-classifier AUROC and per-variable differences),
``predictions.csv``, ``histories.json``, ``models/`` (every model of the headline size, loadable with
``load_model``) and ``shap/`` (source vs adapted model attributions).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from healthfusion.data.cohort import Cohort
from healthfusion.data.domains import (
    DomainSplit,
    concat_cohorts,
    labelled_ids,
    labelled_order,
    labelled_subset,
    split_domains,
    target_partition,
)
from healthfusion.data.splits import split_patients
from healthfusion.evaluation.bootstrap import metrics_with_ci, seed_interval
from healthfusion.evaluation.compare import risk_groups
from healthfusion.evaluation.shift import domain_classifier_auroc, stay_summaries, variable_shift
from healthfusion.features import batch as B
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.features.dataset import ArrayDataset
from healthfusion.features.tabular import StaticTransformer
from healthfusion.features.timeseries import TimeSeriesTransformer
from healthfusion.models.encoders.lstm import LSTMEncoderConfig
from healthfusion.models.transfer import CATEGORICAL, CategoricalEmbedding, TransferModel, TransferModelConfig
from healthfusion.training.adaptation import AdaptationConfig, fit_transfer, predict_proba
from healthfusion.workflows.config import SourceSpec, StrictModel, read_yaml_config, resolve_paths
from healthfusion.workflows.modeling import load_pretrained, use_pretrained_preprocessing
from healthfusion.workflows.runfolder import write_run_config
from healthfusion.workflows.train import open_source

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("target_only", "source_only", "pooled", "finetune", "finetune_frozen", "dann", "mmd",
                               "finetune_dann_mmd")
BASELINE_STRATEGIES = ("source_only", "pooled")
ADAPTATION_STRATEGIES = ("finetune", "finetune_frozen", "dann", "mmd", "finetune_dann_mmd")
METRICS = ("auroc", "auprc", "accuracy", "precision", "recall", "f1", "brier")
Strategy = Literal["target_only", "source_only", "pooled", "finetune", "finetune_frozen", "dann", "mmd",
                   "finetune_dann_mmd"]


# ------------------------------------------------------------------------------------------------ configuration
class TransferData(StrictModel):
    """Cohort(s) to pool into one (e.g. PhysioNet 2012 sets A and B) and the binary label."""

    sources: list[SourceSpec] = Field(min_length=1)
    label: str


class DomainSpec(StrictModel):
    """Domain attribute and values: ``target`` values form the target, ``source`` (default: all others) the source."""

    column: str
    target: list[str] = Field(min_length=1)
    source: list[str] | None = None
    bins: list[float] | None = None


class ProtocolSpec(StrictModel):
    sizes: list[int | Literal["all"]] = Field(default_factory=lambda: [50, 100, 250, 500, 1000, "all"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    headline_size: int | Literal["all"] = 100
    test_fraction: float = Field(0.3, gt=0, lt=1)
    source_val_fraction: float = Field(0.15, gt=0, lt=1)
    target_val_fraction: float = Field(0.2, gt=0, lt=1)
    n_boot: int = Field(200, ge=1)

    @field_validator("sizes")
    @classmethod
    def _positive(cls, sizes):
        bad = [s for s in sizes if s != "all" and s < 2]
        if bad:
            raise ValueError(f"target sizes must be >= 2 or 'all'; got {bad}")
        return sizes


class TransferFeatures(StrictModel):
    hours: float = Field(48.0, gt=0)
    step: float = Field(2.0, gt=0)
    min_count: int = Field(10, ge=1)
    embed: list[str] = Field(default_factory=list, description="categorical static columns with learned embeddings")
    exclude: list[str] = Field(default_factory=list, description="static columns never used")


class TransferModelSpec(StrictModel):
    hidden: int = Field(32, ge=1, description="LSTM hidden size per direction and width of the representation")
    lstm_layers: int = Field(1, ge=1)
    bidirectional: bool = True
    pooling: Literal["attention", "last", "mean"] = "mean"
    static_hidden: int = Field(16, ge=1)
    embedding_dim: int = Field(4, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    pretrained_ts: str | None = Field(None, description="a pretrained LSTM encoder (registry name or folder) that "
                                      "starts the time-series encoder of every model; its architecture and saved "
                                      "preprocessing replace hidden/lstm_layers/bidirectional/pooling and the ts features")
    pretrained_root: Path | None = None


class LoopSpec(StrictModel):
    max_epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(4, ge=1)
    early_stopping: bool = True
    monitor: Literal["val_loss", "val_auroc"] = "val_loss"
    class_weight: bool = True


def _finetune_default() -> LoopSpec:
    return LoopSpec(max_epochs=40, batch_size=32, lr=3e-4, patience=8)


class AdaptationSpec(StrictModel):
    dann_weight: float = Field(1.0, ge=0, description="maximum gradient-reversal strength")
    dann_gamma: float = Field(10.0, ge=0)
    mmd_weight: float = Field(1.0, ge=0)
    mmd_schedule: Literal["constant", "ramp"] = "constant"
    freeze: list[Literal["ts_encoder", "static_encoder", "embeddings", "fc"]] = Field(
        default_factory=lambda: ["ts_encoder"], description="parts fixed by finetune_frozen")


class ShapSpec(StrictModel):
    enabled: bool = True
    compare: Strategy = "finetune_dann_mmd"
    n_patients: int = Field(100, ge=1)
    n_background: int = Field(100, ge=1)
    n_samples: int = Field(20, ge=1)
    top_k: int = Field(5, ge=1)


class TransferConfig(StrictModel):
    """The validated transfer config (see ``docs/transfer.md`` for an annotated example)."""

    name: str = "transfer"
    out: Path | None = None
    data: TransferData
    domain: DomainSpec
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)
    features: TransferFeatures = Field(default_factory=TransferFeatures)
    model: TransferModelSpec = Field(default_factory=TransferModelSpec)
    training: LoopSpec = Field(default_factory=LoopSpec)
    finetune: LoopSpec = Field(default_factory=_finetune_default)
    adaptation: AdaptationSpec = Field(default_factory=AdaptationSpec)
    strategies: list[Strategy] = Field(default_factory=lambda: list(STRATEGIES), min_length=1)
    shift: bool = True
    shap: ShapSpec = Field(default_factory=ShapSpec)
    threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TransferConfig:
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies lists a strategy twice: {self.strategies}")
        both = set(self.features.embed) & set(self.features.exclude)
        if both:
            raise ValueError(f"features.embed and features.exclude both list {sorted(both)}")
        return self


def load_transfer_config(path: str | Path) -> TransferConfig:
    """Read and validate a transfer config; relative data paths resolve against the config file's folder.

    Raises
    ------
    ConfigError
        Naming the file and each offending key (unknown keys included).
    """
    config = read_yaml_config(path, TransferConfig)
    for spec in config.data.sources:
        resolve_paths(Path(path).parent, spec, ("path", "cohort"))
    resolve_paths(Path(path).parent, config.model, ("pretrained_root",))
    return config


# ------------------------------------------------------------------------------------------------ features
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


def _featurize(config: TransferConfig, cohort: Cohort, split: DomainSplit):
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
    use_pretrained_preprocessing(featurizer, _pretrained_ts(config))
    coder = CategoryCoder(feats.embed).fit(cohort, split.source_ids + split.target_ids) if feats.embed else None
    ids = split.source_ids + split.target_ids
    data = featurizer.transform(cohort, ids)
    if coder is not None:
        data = data.with_arrays(**{CATEGORICAL: coder.transform(cohort, ids)})
    keep = [k for k in data if k in (B.TS_VALUES, B.TS_MASK, B.TS_DELTA, B.TS_LENGTHS, B.STATIC, CATEGORICAL,
                                     B.TARGET, B.INDEX)]
    data = ArrayDataset({k: data[k] for k in keep}, meta={"stay_ids": ids})
    return featurizer, coder, data


def _pretrained_ts(config: TransferConfig) -> dict:
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


def _model_config(config: TransferConfig, featurizer: CohortFeaturizer, coder: CategoryCoder | None):
    dims = featurizer.input_dims()
    spec = config.model
    categorical = () if coder is None else tuple(
        CategoricalEmbedding(name=c, n_levels=len(coder.levels_[c]), dim=spec.embedding_dim) for c in coder.columns)
    pretrained = _pretrained_ts(config)
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


# ------------------------------------------------------------------------------------------------ protocol
class _Rows:
    """Row positions of stay ids in the featurized dataset."""

    def __init__(self, data: ArrayDataset):
        self.data = data
        self.pos = {s: i for i, s in enumerate(data.meta["stay_ids"])}

    def __call__(self, ids: list[str]) -> ArrayDataset:
        return self.data.subset(np.array([self.pos[s] for s in ids], dtype=np.int64))


def _two_way(cohort: Cohort, ids: list[str], label: str, val_fraction: float, seed: int) -> tuple[list, list]:
    stays = cohort.stays.set_index("stay_id").loc[ids].reset_index()
    parts = split_patients(stays, {"train": 1 - val_fraction, "val": val_fraction}, seed=seed,
                           stratify=cohort.label(label))
    return [s for s in ids if parts[s] == "train"], [s for s in ids if parts[s] == "val"]


def seed_splits(config: TransferConfig, cohort: Cohort, split: DomainSplit, seed: int) -> dict[str, Any]:
    """The stays of one seed: source train/val, target pool/test and the nested labelled order of the pool.

    Returned lists are stay ids; ``labelled(size)`` gives that size's (target-train, target-validation) ids.
    Nothing in any training or validation list is a target test stay.
    """
    p, label = config.protocol, config.data.label
    labelled_source = labelled_ids(cohort, split.source_ids, label)
    source_train, source_val = _two_way(cohort, labelled_source, label, p.source_val_fraction, seed)
    part = target_partition(cohort, split.target_ids, label, p.test_fraction, seed)
    order = labelled_order(cohort, part.pool_ids, label, seed)

    def labelled(size):
        ids = labelled_subset(order, size)
        return _two_way(cohort, ids, label, p.target_val_fraction, seed)

    return {"source_train": source_train, "source_val": source_val, "pool": part.pool_ids, "test": part.test_ids,
            "order": order, "labelled": labelled}


def _loop(spec: LoopSpec, seed: int, **extra) -> AdaptationConfig:
    return AdaptationConfig(**spec.model_dump(), seed=seed, **extra)


def _new_model(model_config: TransferModelConfig, seed: int, ts_state: dict | None = None) -> TransferModel:
    torch.manual_seed(seed)
    model = TransferModel(model_config)
    if ts_state is not None:
        model.ts_encoder.load_state_dict(ts_state, strict=True)
    return model


def run_strategy(strategy: str, config: TransferConfig, rows: _Rows, ids: dict[str, list[str]],
                 model_config: TransferModelConfig, source_model: TransferModel | None, seed: int,
                 ts_state: dict | None = None):
    """Train one strategy; returns (model, history). ``ids`` has source_train/source_val/target_train/target_val/
    pool lists; the target test set is not among them. ``ts_state``: pretrained weights that start the
    time-series encoder of every model trained from scratch here."""
    a = config.adaptation
    src_tr, src_va = rows(ids["source_train"]), rows(ids["source_val"])
    tgt_tr, tgt_va = rows(ids["target_train"]), rows(ids["target_val"])
    pooled_tr = rows(ids["source_train"] + ids["target_train"])
    pooled_va = rows(ids["source_val"] + ids["target_val"])
    align = {"source": src_tr, "target": rows(ids["pool"])}
    if strategy == "source_only":
        model = _new_model(model_config, seed, ts_state)
        return model, fit_transfer(model, src_tr, src_va, _loop(config.training, seed))
    if strategy == "target_only":
        model = _new_model(model_config, seed, ts_state)
        return model, fit_transfer(model, tgt_tr, tgt_va, _loop(config.training, seed))
    if strategy in ("pooled", "dann", "mmd"):
        model = _new_model(model_config, seed, ts_state)
        extra = {"dann": {"dann_weight": a.dann_weight, "dann_gamma": a.dann_gamma},
                 "mmd": {"mmd_weight": a.mmd_weight, "mmd_schedule": a.mmd_schedule,
                         "dann_gamma": a.dann_gamma}}.get(strategy, {})
        kwargs = align if extra else {}
        return model, fit_transfer(model, pooled_tr, pooled_va, _loop(config.training, seed, **extra), **kwargs)
    if source_model is None:
        raise ValueError(f"Strategy {strategy!r} fine-tunes the source model; it needs source pretraining.")
    model = copy.deepcopy(source_model)
    if strategy == "finetune":
        return model, fit_transfer(model, tgt_tr, tgt_va, _loop(config.finetune, seed))
    if strategy == "finetune_frozen":
        return model, fit_transfer(model, tgt_tr, tgt_va, _loop(config.finetune, seed, freeze=tuple(a.freeze)))
    cfg = _loop(config.finetune, seed, dann_weight=a.dann_weight, dann_gamma=a.dann_gamma, mmd_weight=a.mmd_weight,
                mmd_schedule=a.mmd_schedule)
    return model, fit_transfer(model, tgt_tr, tgt_va, cfg, **align)


def _score(y: np.ndarray, prob: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    quiet = logging.getLogger("healthfusion.evaluation.bootstrap")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # undefined precision on resamples without a predicted positive: CI is NaN
    try:
        table = metrics_with_ci(y, prob, threshold=0.5, n_boot=n_boot, seed=seed).set_index("metric")
    finally:
        quiet.setLevel(level)
    out: dict[str, float] = {"n_test": int(table.loc["auroc", "n"]), "n_test_positive": int(np.sum(y))}
    for m in METRICS:
        out[m] = float(table.loc[m, "value"])
        out[f"{m}_ci_low"] = float(table.loc[m, "ci_low"])
        out[f"{m}_ci_high"] = float(table.loc[m, "ci_high"])
    return out


# ------------------------------------------------------------------------------------------------ summaries
def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and size: number of seeds and, for each metric, mean, sd and a 95% t-interval over seeds."""
    rows = []
    ok = results[results["status"] == "ok"]
    for (strategy, size), group in ok.groupby(["strategy", "size"], sort=False):
        row: dict[str, Any] = {"strategy": strategy, "size": size, "n_seeds": len(group),
                               "n_labelled": float(group["n_labelled"].mean())}
        for m in METRICS:
            mean, low, high = seed_interval(group[m].to_numpy(dtype=float), bounds=(0.0, 1.0))
            row.update({m: mean, f"{m}_sd": float(group[m].std(ddof=1)) if len(group) > 1 else float("nan"),
                        f"{m}_seed_ci_low": low, f"{m}_seed_ci_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def gains(results: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Each adaptation strategy minus the bar (the better, by mean over seeds, of source-only and pooled), paired
    by seed, per size: mean difference and 95% t-interval over seeds."""
    ok = results[results["status"] == "ok"]
    rows = []
    for size, group in ok.groupby("size", sort=False):
        wide = group.pivot_table(index="seed", columns="strategy", values=metric)
        bars = [s for s in BASELINE_STRATEGIES if s in wide.columns]
        if not bars:
            continue
        bar = max(bars, key=lambda s: wide[s].mean())
        for strategy in [s for s in (*ADAPTATION_STRATEGIES, "target_only") if s in wide.columns]:
            diff = (wide[strategy] - wide[bar]).to_numpy(dtype=float)
            mean, low, high = seed_interval(diff, bounds=(-1.0, 1.0))
            rows.append({"size": size, "strategy": strategy, "bar": bar, f"{metric}_bar": float(wide[bar].mean()),
                         f"{metric}_strategy": float(wide[strategy].mean()), "gain": mean, "gain_ci_low": low,
                         "gain_ci_high": high, "n_seeds": int((~np.isnan(diff)).sum()),
                         "wins": int((diff > 0).sum())})
    return pd.DataFrame(rows)


def plot_learning_curve(summary: pd.DataFrame, path: Path, metric: str = "auroc", title: str = "") -> Path:
    """AUROC (mean over seeds, 95% t-interval bars) against the labelled target size, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sizes = summary.assign(n=summary["n_labelled"]).sort_values("n")
    for strategy in [s for s in STRATEGIES if s in set(summary["strategy"])]:
        part = sizes[sizes["strategy"] == strategy]
        err = np.vstack([part[metric] - part[f"{metric}_seed_ci_low"], part[f"{metric}_seed_ci_high"] - part[metric]])
        style = "--" if strategy in BASELINE_STRATEGIES or strategy == "target_only" else "-"
        ax.errorbar(part["n"], part[metric], yerr=np.nan_to_num(err), marker="o", capsize=3, linestyle=style,
                    label=strategy)
    ax.set_xscale("log")
    ticks = sorted({int(round(n)) for n in sizes["n"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled target stays (train + validation)")
    ax.set_ylabel(f"target test {metric.upper()} (mean over seeds, 95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def measure_shift(data: _Rows, source_ids: list[str], target_ids: list[str], variables: list[str],
                  static_names: list[str] | None, seed: int) -> tuple[dict, pd.DataFrame]:
    """Domain-classifier AUROC (source vs target pool) and the per-variable shift table."""

    def summaries(ids):
        d = data(ids)
        static = d[B.STATIC] if B.STATIC in d else None
        names = [f"static:{n}" for n in static_names] if static is not None else None
        return stay_summaries(d[B.TS_VALUES], d[B.TS_MASK], variables, static, names)

    src, tgt = summaries(source_ids), summaries(target_ids)
    ci = domain_classifier_auroc(src, tgt, seed=seed)
    return ({"domain_auroc": ci.value, "domain_auroc_ci_low": ci.ci_low, "domain_auroc_ci_high": ci.ci_high,
             "n_source": len(source_ids), "n_target": len(target_ids)}, variable_shift(src, tgt))


# ------------------------------------------------------------------------------------------------ the run
def load_cohort(config: TransferConfig, console=None) -> Cohort:
    """The configured sources read and pooled into one cohort."""
    return concat_cohorts([open_source(spec, console) for spec in config.data.sources])


def run_transfer(config: TransferConfig, console=None) -> Path:
    """Run the whole sweep and write the run folder (see the module docstring). Returns the folder.

    Raises
    ------
    ValueError
        On bad data, domain values or label (the message names what to fix).
    """
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    run_dir = Path(config.out or f"runs/transfer-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(config.model_dump(mode="json"), run_dir)  # paths relative to the run folder
    cohort = load_cohort(config, console)
    cohort.meta.label(config.data.label)  # fails early, naming the labels the cohort has
    d = config.domain
    split = split_domains(cohort, d.column, d.target, d.source, d.bins)
    featurizer, coder, data = _featurize(config, cohort, split)
    rows = _Rows(data)
    model_config = _model_config(config, featurizer, coder)
    pretrained = _pretrained_ts(config)
    ts_state = pretrained["ts"][0].state_dict() if pretrained else None
    prep = {"featurizer": featurizer.get_state(), "categorical": None if coder is None else coder.get_state(),
            "domain": split.summary()}
    y_all = cohort.label(config.data.label)
    p = config.protocol
    strategies = [s for s in STRATEGIES if s in config.strategies]
    sized = [s for s in strategies if s != "source_only"]
    need_source = any(s in strategies for s in ("source_only", "finetune", "finetune_frozen", "finetune_dann_mmd"))
    results, predictions, histories, saved, skipped = [], [], {}, {}, []
    shift_info = None
    total = len(p.seeds) * (int(need_source) + len(p.sizes) * len(sized))
    progress = _progress(console)
    task = progress.add_task("transfer", total=total) if progress else None
    with progress if progress else nullcontext():
        for seed in p.seeds:
            ids = seed_splits(config, cohort, split, seed)
            test = rows(ids["test"])
            y_test = test[B.TARGET]
            if config.shift and shift_info is None:
                static_names = (featurizer.transformers_["static"].feature_names_
                                if "static" in featurizer.transformers_ else None)
                shift_info = measure_shift(rows, split.source_ids, ids["pool"],
                                           featurizer.transformers_["ts"].variables_, static_names, seed)
            source_model = None
            base = {"source_train": ids["source_train"], "source_val": ids["source_val"], "pool": ids["pool"]}
            if need_source:
                _describe(progress, task, f"seed {seed}: source pretraining")
                t0 = time.perf_counter()
                source_model, hist = run_strategy("source_only", config, rows, {**base, "target_train": [],
                                                  "target_val": []}, model_config, None, seed, ts_state)
                source_seconds = time.perf_counter() - t0
                source_prob = predict_proba(source_model, test)
                source_scores = _score(y_test, source_prob, p.n_boot, seed)
                histories[f"source_only/seed{seed}"] = hist.to_dict()
                saved[("source_only", seed, None)] = source_model
                _advance(progress, task)
            for size in p.sizes:
                if size != "all" and size > len(ids["order"]):
                    log.warning("Size %s skipped for seed %d: the target pool has %d labelled stays.", size, seed,
                                len(ids["order"]))
                    skipped.append({"seed": seed, "size": size, "pool": len(ids["order"])})
                    _advance(progress, task, len(sized))
                    continue
                target_train, target_val = ids["labelled"](size)
                fold = {**base, "target_train": target_train, "target_val": target_val}
                n_labelled = len(target_train) + len(target_val)
                common = {"seed": seed, "size": str(size), "n_labelled": n_labelled,
                          "n_target_train": len(target_train), "n_target_val": len(target_val)}
                if "source_only" in strategies:
                    results.append({**common, "strategy": "source_only", "status": "ok", **source_scores,
                                    "best_epoch": hist.best_epoch, "epochs": len(hist.train_loss),
                                    "seconds": source_seconds, "domain_accuracy": None, "mmd": None})
                    predictions.append(_pred_frame(ids["test"], y_test, source_prob, "source_only", seed, size))
                for strategy in sized:
                    _describe(progress, task, f"seed {seed}, n={size}: {strategy}")
                    t0 = time.perf_counter()
                    try:
                        model, h = run_strategy(strategy, config, rows, fold, model_config, source_model, seed,
                                                ts_state)
                    except ValueError as exc:
                        log.warning("%s (seed %d, n=%s) failed: %s", strategy, seed, size, exc)
                        results.append({**common, "strategy": strategy, "status": f"failed: {exc}"})
                        _advance(progress, task)
                        continue
                    prob = predict_proba(model, test)
                    results.append({**common, "strategy": strategy, "status": "ok", **_score(y_test, prob, p.n_boot,
                                                                                              seed),
                                    "best_epoch": h.best_epoch, "epochs": len(h.train_loss),
                                    "seconds": time.perf_counter() - t0,
                                    "domain_accuracy": _last(h.domain_accuracy), "mmd": _last(h.mmd)})
                    predictions.append(_pred_frame(ids["test"], y_test, prob, strategy, seed, size))
                    histories[f"{strategy}/seed{seed}/n{size}"] = h.to_dict()
                    log.info("seed %d, n=%s, %s: AUROC %.3f (%d epochs, %.0f s)", seed, size, strategy,
                             results[-1]["auroc"], len(h.train_loss), results[-1]["seconds"])
                    pd.DataFrame(results).to_csv(run_dir / "results.csv", index=False)  # partial results survive
                    if size == p.headline_size:
                        saved[(strategy, seed, size)] = model
                    _advance(progress, task)
    if not predictions:
        pools = sorted({row["pool"] for row in skipped})
        raise ValueError(f"No target size of protocol.sizes {list(p.sizes)} could be trained: the target pool has "
                         f"{', '.join(map(str, pools))} labelled stays (per seed); choose sizes up to that, or 'all'.")
    results_df = pd.DataFrame(results)
    results_df.to_csv(run_dir / "results.csv", index=False)
    pd.concat(predictions, ignore_index=True).to_csv(run_dir / "predictions.csv", index=False)
    (run_dir / "histories.json").write_text(json.dumps(histories, indent=1, default=_json_default))
    summary = summarise(results_df)
    summary.to_csv(run_dir / "summary.csv", index=False)
    gains(results_df).to_csv(run_dir / "gains.csv", index=False)
    if len(summary):
        plot_learning_curve(summary, run_dir / "learning_curve.png",
                            title=f"{config.name}: target {d.column} in {d.target}")
    for (strategy, seed, size), model in saved.items():
        folder = run_dir / "models" / strategy / (f"seed{seed}" if size is None else f"seed{seed}-n{size}")
        model.save_pretrained(folder, preprocessing_state=prep)
    if shift_info is not None:
        info, table = shift_info
        (run_dir / "shift.json").write_text(json.dumps({**info, **split.summary()}, indent=2,
                                                       default=_json_default))
        table.to_csv(run_dir / "shift.csv", index=False)
    meta = {"seconds": time.perf_counter() - started, "n_target_test": len(ids["test"]),
            "domain": split.summary(), "y_prevalence_target": float(y_all.reindex(split.target_ids).mean()),
            "skipped_sizes": skipped}
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2, default=_json_default))
    compare, first = config.shap.compare, p.seeds[0]
    if config.shap.enabled and ("source_only", first, None) in saved and (compare, first, p.headline_size) in saved:
        log.info("SHAP: source vs adapted model")  # the progress bar has closed: a spinner shows this last step
        with console.status("SHAP: source vs adapted model ...") if console is not None else nullcontext():
            explain_models(config, run_dir, rows, seed_splits(config, cohort, split, first),
                           {"source_only": saved[("source_only", first, None)],
                            compare: saved[(compare, first, p.headline_size)]}, featurizer, first)
    elif config.shap.enabled:
        log.warning("SHAP skipped: it needs the source model and %s at the headline size %s.", compare,
                    p.headline_size)
    return run_dir


def explain_transfer_run(run_dir: str | Path, console=None) -> dict:
    """(Re)compute the SHAP outputs of a finished transfer run from its ``config.yaml`` and saved models.

    The features are refitted on the source stays exactly as in the run (deterministic) and the first seed's
    splits are rebuilt; the models are read from ``models/``.

    Raises
    ------
    ValueError
        If the run folder lacks its config or the two models (source and ``shap.compare`` at the headline size of
        the first seed).
    """
    from healthfusion.models.base import load_model

    run_dir = Path(run_dir)
    config = load_transfer_config(run_dir / "config.yaml")
    p, compare = config.protocol, config.shap.compare
    first = p.seeds[0]
    folders = {"source_only": run_dir / "models" / "source_only" / f"seed{first}",
               compare: run_dir / "models" / compare / f"seed{first}-n{p.headline_size}"}
    missing = [str(f) for f in folders.values() if not f.is_dir()]
    if missing:
        raise ValueError(f"Run {run_dir} lacks the saved model folder(s) {missing}; SHAP compares the source model "
                         f"with {compare!r} at the headline size of seed {first}.")
    torch.set_num_threads(config.threads)
    cohort = load_cohort(config, console)
    d = config.domain
    split = split_domains(cohort, d.column, d.target, d.source, d.bins)
    featurizer, _, data = _featurize(config, cohort, split)
    models = {name: load_model(folder)[0] for name, folder in folders.items()}
    return explain_models(config, run_dir, _Rows(data), seed_splits(config, cohort, split, first), models,
                          featurizer, first)


def explain_models(config: TransferConfig, run_dir: Path, rows: _Rows, ids: dict[str, Any],
                   models: dict[str, TransferModel], featurizer: CohortFeaturizer, seed: int) -> dict:
    """SHAP values (expected gradients, :func:`~healthfusion.evaluation.explain.attribute_timeseries`) of the
    source model and the adapted model on the same target test stays, against the same source background.

    Writes to ``run_dir / "shap"``: ``global_importance.csv`` (mean |SHAP| per variable, one column per model),
    ``global_importance.png`` (side by side), ``top_features.csv`` (each explained stay's top ``top_k``
    contributors per model) and ``shap.json`` (settings and the Spearman correlation of the two rankings).
    """
    from scipy.stats import spearmanr

    from healthfusion.evaluation.explain import attribute_timeseries, model_forward

    spec = config.shap
    out = run_dir / "shap"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 11])
    test_ids = sorted(rng.choice(ids["test"], min(spec.n_patients, len(ids["test"])), replace=False).tolist(),
                      key=ids["test"].index)
    bg_ids = rng.choice(ids["source_train"], min(spec.n_background, len(ids["source_train"])),
                        replace=False).tolist()
    batch, background = rows(test_ids).without(B.TARGET), rows(bg_ids).without(B.TARGET)
    variables = featurizer.transformers_["ts"].variables_
    static = "static" in featurizer.transformers_
    static_names = [f"static:{n}" for n in featurizer.transformers_["static"].feature_names_] if static else None
    importance, tops = {}, []
    for name, model in models.items():
        model.eval()
        attr = attribute_timeseries(model_forward(model), batch, background=background, variables=variables,
                                    method="gradient_shap", n_samples=spec.n_samples, include_static=static,
                                    static_names=static_names, seed=seed, sample_ids=test_ids,
                                    step_hours=config.features.step)
        importance[name] = attr.global_importance()
        tops.append(attr.top_features(spec.top_k).assign(model=name))
    table = pd.DataFrame(importance)
    table.index.name = "feature"
    table = table.sort_values(table.columns[0], ascending=False)
    table.to_csv(out / "global_importance.csv")
    pd.concat(tops, ignore_index=True).rename(columns={"sample": "stay_id"}).to_csv(out / "top_features.csv",
                                                                                    index=False)
    names = list(models)
    rho = float(spearmanr(table[names[0]], table[names[-1]]).statistic) if len(names) > 1 else float("nan")
    _plot_importance(table, out / "global_importance.png", spec.top_k * 3)
    info = {"method": "gradient_shap (expected gradients, logit units)", "models": names, "seed": seed,
            "n_explained": len(test_ids), "n_background": len(bg_ids), "n_samples": spec.n_samples,
            "spearman_importance": rho}
    (out / "shap.json").write_text(json.dumps(info, indent=2))
    return info


def _plot_importance(table: pd.DataFrame, path: Path, top: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table.columns), figsize=(5.5 * len(table.columns), 0.28 * top + 1.5),
                             squeeze=False)
    for ax, name in zip(axes[0], table.columns, strict=True):
        part = table[name].sort_values(ascending=False).head(top)[::-1]
        ax.barh(part.index, part.to_numpy())
        ax.set_title(name)
        ax.set_xlabel("mean |SHAP| (logit)")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ helpers
def _pred_frame(stay_ids, y, prob, strategy, seed, size) -> pd.DataFrame:
    return pd.DataFrame({"seed": seed, "size": str(size), "strategy": strategy, "stay_id": stay_ids,
                         "y": y, "prob": prob, "risk": risk_groups(prob, 0.5)})


def _last(values):
    return values[-1] if values else None


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def _progress(console):
    if console is None:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def _describe(progress, task, text: str) -> None:
    if progress is not None:
        progress.update(task, description=text)
    log.info(text)


def _advance(progress, task, steps: int = 1) -> None:
    if progress is not None:
        progress.advance(task, steps)
