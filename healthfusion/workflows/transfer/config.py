"""The ``healthfusion transfer`` run config (:class:`TransferConfig`; unknown keys are errors).

The ``training:`` (source, target-only, pooled, DANN and MMD runs) and ``finetune:`` (runs that start from the
source model) sections are the one :class:`~healthfusion.training.config.TrainerConfig` of every training mode, so
``device``, ``mixed_precision``, ``grad_clip``, ``lr_schedule`` ... work here as in ``train``. Keys a written
section leaves out take this workflow's :data:`TRAINING_PRESET` (for ``finetune:`` too), not the generic
defaults; a config without a ``finetune:`` section fine-tunes with :data:`FINETUNE_PRESET`. Two keys of earlier versions are still read: ``class_weight: true|false`` (now ``imbalance:
class_weight|none``) and ``early_stopping: false`` (now ``patience: null``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from healthfusion.training.config import TrainerConfig, training_section
from healthfusion.workflows.config import (
    QUICK_DESCRIPTION,
    SourceSpec,
    StrictModel,
    read_yaml_config,
    resolve_paths,
)

STRATEGIES: tuple[str, ...] = ("target_only", "source_only", "pooled", "finetune", "finetune_frozen", "dann", "mmd",
                               "finetune_dann_mmd")
BASELINE_STRATEGIES = ("source_only", "pooled")
ADAPTATION_STRATEGIES = ("finetune", "finetune_frozen", "dann", "mmd", "finetune_dann_mmd")
METRICS = ("auroc", "auprc", "ece", "cal_slope", "cal_intercept", "accuracy", "precision", "recall", "f1", "brier")
#: the metrics of :data:`METRICS` that are not bounded by [0, 1] (their t-intervals over seeds are not clipped)
UNBOUNDED_METRICS = ("cal_slope", "cal_intercept")
Strategy = Literal["target_only", "source_only", "pooled", "finetune", "finetune_frozen", "dann", "mmd",
                   "finetune_dann_mmd"]

#: What ``training:`` keys left out default to (early stopping on the class-weighted validation log-loss).
TRAINING_PRESET: dict[str, Any] = {"max_epochs": 15, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4,
                                   "patience": 4, "monitor": "val_loss", "imbalance": "class_weight"}
#: The ``finetune:`` section of a config that has none.
FINETUNE_PRESET: dict[str, Any] = {**TRAINING_PRESET, "max_epochs": 40, "batch_size": 32, "lr": 3e-4, "patience": 8}


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

    #: what ``--quick`` sets (see :func:`~healthfusion.workflows.config.apply_quick`); ``--set`` still wins
    QUICK: ClassVar[dict[str, Any]] = {
        "training.max_epochs": 2, "finetune.max_epochs": 2, "protocol.seeds": [0], "protocol.n_boot": 20,
        "shap.n_patients": 10, "shap.n_background": 10, "shap.n_samples": 5}

    name: str = "transfer"
    out: Path | None = None
    quick: bool = Field(False, description=QUICK_DESCRIPTION)
    data: TransferData
    domain: DomainSpec
    protocol: ProtocolSpec = Field(default_factory=ProtocolSpec)
    features: TransferFeatures = Field(default_factory=TransferFeatures)
    model: TransferModelSpec = Field(default_factory=TransferModelSpec)
    training: TrainerConfig = Field(default_factory=lambda: TrainerConfig(**TRAINING_PRESET))
    finetune: TrainerConfig = Field(default_factory=lambda: TrainerConfig(**FINETUNE_PRESET))
    adaptation: AdaptationSpec = Field(default_factory=AdaptationSpec)
    strategies: list[Strategy] = Field(default_factory=lambda: list(STRATEGIES), min_length=1)
    shift: bool = True
    shap: ShapSpec = Field(default_factory=ShapSpec)
    threads: int = Field(1, ge=1)

    @field_validator("training", "finetune", mode="before")
    @classmethod
    def _presets(cls, value, info):
        # a section that is written starts from TRAINING_PRESET (also finetune:, as in earlier versions);
        # FINETUNE_PRESET is the finetune: section of a config without one
        return training_section(value, TRAINING_PRESET, info.field_name)

    @model_validator(mode="after")
    def _check(self) -> TransferConfig:
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies lists a strategy twice: {self.strategies}")
        both = set(self.features.embed) & set(self.features.exclude)
        if both:
            raise ValueError(f"features.embed and features.exclude both list {sorted(both)}")
        return self


def load_transfer_config(path: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None,
                         quick: bool = False) -> TransferConfig:
    """Read and validate a transfer config (``overrides``, ``out`` and ``quick`` as in
    :func:`~healthfusion.workflows.config.read_yaml_config`); relative paths resolve against the file's folder.

    Raises
    ------
    ConfigError
        Naming the file and each offending key (unknown keys included).
    """
    config = read_yaml_config(path, TransferConfig, overrides, out, quick)
    for spec in config.data.sources:
        resolve_paths(Path(path).parent, spec, ("path", "cohort"))
    resolve_paths(Path(path).parent, config.model, ("pretrained_root",))
    return config

