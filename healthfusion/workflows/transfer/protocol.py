"""The per-seed protocol of a transfer run: the stay splits, one training run per strategy, and scoring.

Every strategy trains with the one :class:`~healthfusion.training.trainer.Trainer`; what differs is its loss
terms (risk, + DANN, + MMD), the auxiliary sources aligned, the starting weights and the frozen parts.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from healthfusion.data.cohort import Cohort
from healthfusion.data.domains import (
    DomainSplit,
    labelled_ids,
    labelled_order,
    labelled_subset,
    target_partition,
)
from healthfusion.data.splits import split_patients
from healthfusion.evaluation.bootstrap import metrics_with_ci
from healthfusion.evaluation.calibration import calibration_with_ci
from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.transfer import TransferModel, TransferModelConfig
from healthfusion.training import checkpoint
from healthfusion.training.config import TrainerConfig, TrainingHistory
from healthfusion.training.finetune import FinetuneConfig
from healthfusion.training.losses import LossTerm
from healthfusion.training.losses.dann import DANNLoss
from healthfusion.training.losses.mmd import MMDLoss
from healthfusion.training.losses.supervised import SupervisedLoss
from healthfusion.training.trainer import Trainer
from healthfusion.workflows.transfer.config import METRICS, TransferConfig

log = logging.getLogger(__name__)


class Rows:
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


def train_model(model: TransferModel, train: ArrayDataset, val: ArrayDataset, config: TrainerConfig,
                losses: list[LossTerm], sources: dict[str, ArrayDataset] | None = None,
                checkpoints: Path | None = None, resume: bool = False) -> TrainingHistory:
    """Fit ``model`` in place with the one trainer (early stopping on ``val``); returns its history.
    ``checkpoints``: folder for the fit's newest checkpoint, from which ``resume`` continues."""
    trainer = Trainer(config, loss=losses)
    if checkpoints is not None:
        checkpoint.resumable(trainer, checkpoints, resume)
    history = trainer.fit(model, train, val, "binary", sources=sources)
    model.eval()
    return history


def predict(model: TransferModel, data: ArrayDataset, config: TrainerConfig) -> np.ndarray:
    """``[n]`` predicted probabilities of the outcome (eval mode, on the configured device)."""
    return Trainer(config).predict(model, data, "binary")


def _frozen(model: TransferModel, names: list[str]) -> FinetuneConfig | None:
    """The linear-probe fine-tuning of ``names`` that ``model`` has (absent parts, e.g. no static encoder, skipped)."""
    present = tuple(n for n in names if getattr(model, n, None) is not None
                    and any(True for _ in getattr(model, n).parameters()))
    return FinetuneConfig(strategy="linear_probe", modules=present) if present else None


def _new_model(model_config: TransferModelConfig, seed: int, ts_state: dict | None = None) -> TransferModel:
    torch.manual_seed(seed)
    model = TransferModel(model_config)
    if ts_state is not None:
        model.ts_encoder.load_state_dict(ts_state, strict=True)
    return model


def run_strategy(strategy: str, config: TransferConfig, rows: Rows, ids: dict[str, list[str]],
                 model_config: TransferModelConfig, source_model: TransferModel | None, seed: int,
                 ts_state: dict | None = None, checkpoints: Path | None = None, resume: bool = False):
    """Train one strategy; returns (model, history). ``ids`` has source_train/source_val/target_train/target_val/
    pool lists; the target test set is not among them. ``ts_state``: pretrained weights that start the
    time-series encoder of every model trained from scratch here. ``checkpoints``/``resume``: see
    :func:`train_model`."""

    def fit(*args) -> TrainingHistory:
        return train_model(*args, checkpoints=checkpoints, resume=resume)

    a = config.adaptation
    src_tr, src_va = rows(ids["source_train"]), rows(ids["source_val"])
    tgt_tr, tgt_va = rows(ids["target_train"]), rows(ids["target_val"])
    align = {"source": src_tr, "target": rows(ids["pool"])}
    training, finetune = (c.model_copy(update={"seed": seed}) for c in (config.training, config.finetune))

    def risk(cfg: TrainerConfig) -> SupervisedLoss:
        return SupervisedLoss("binary", class_weight=cfg.imbalance == "class_weight")

    mmd = [MMDLoss(a.mmd_weight, a.mmd_schedule, a.dann_gamma)] if a.mmd_weight > 0 else []
    dann = [DANNLoss(a.dann_weight, a.dann_gamma)] if a.dann_weight > 0 else []
    if strategy in ("source_only", "target_only"):
        model = _new_model(model_config, seed, ts_state)
        train, val = (src_tr, src_va) if strategy == "source_only" else (tgt_tr, tgt_va)
        return model, fit(model, train, val, training, [risk(training)])
    if strategy in ("pooled", "dann", "mmd"):
        model = _new_model(model_config, seed, ts_state)
        pooled_tr = rows(ids["source_train"] + ids["target_train"])
        pooled_va = rows(ids["source_val"] + ids["target_val"])
        extra = {"pooled": [], "dann": dann, "mmd": mmd}[strategy]
        return model, fit(model, pooled_tr, pooled_va, training, [risk(training), *extra],
                                  align if extra else None)
    if source_model is None:
        raise ValueError(f"Strategy {strategy!r} fine-tunes the source model; it needs source pretraining.")
    model = copy.deepcopy(source_model)
    if strategy == "finetune":
        return model, fit(model, tgt_tr, tgt_va, finetune, [risk(finetune)])
    if strategy == "finetune_frozen":
        frozen = finetune.model_copy(update={"finetune": _frozen(model, a.freeze)})
        return model, fit(model, tgt_tr, tgt_va, frozen, [risk(finetune)])
    return model, fit(model, tgt_tr, tgt_va, finetune, [risk(finetune), *mmd, *dann],
                              align if mmd or dann else None)


def score(y: np.ndarray, prob: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """Target test metrics of one model: ``n_test``, ``n_test_positive`` and each of :data:`METRICS` (AUROC,
    AUPRC, ..., ECE, calibration slope and intercept) with ``_ci_low``/``_ci_high`` (bootstrap 95%)."""
    quiet = logging.getLogger("healthfusion.evaluation.bootstrap")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # undefined precision on resamples without a predicted positive: CI is NaN
    try:
        table = pd.concat([metrics_with_ci(y, prob, threshold=0.5, n_boot=n_boot, seed=seed),
                           calibration_with_ci(y, prob, n_boot=n_boot, seed=seed)]).set_index("metric")
    finally:
        quiet.setLevel(level)
    out: dict[str, float] = {"n_test": int(table.loc["auroc", "n"]), "n_test_positive": int(np.sum(y))}
    for m in METRICS:
        out[m] = float(table.loc[m, "value"])
        out[f"{m}_ci_low"] = float(table.loc[m, "ci_low"])
        out[f"{m}_ci_high"] = float(table.loc[m, "ci_high"])
    return out


