"""The run configuration read by ``healthfusion train --config RUN.yaml``: validated, unknown keys are errors.

Example ``RUN.yaml``::

    name: physionet-mortality
    out: runs/physionet
    data:
      source: physionet2012
      path: ../shared/data/physionet2012/set-a.tar.gz
      label: in_hospital_death
      test:                      # optional external test set (all its stays are test stays)
        source: physionet2012
        path: ../shared/data/physionet2012/set-b.tar.gz
    features:
      modalities: [ts, static]
      hours: 48
    model:
      fusion: concat
      hidden: 64
      # pretrained: {ts: physionet-lstm}   # a pretrained encoder by registry name or folder
    training:
      max_epochs: 50
      imbalance: class_weight
      # finetune: {strategy: linear_probe}   # or full, gradual_unfreeze, discriminative
    baselines: [logistic_regression, svm, random_forest, gradient_boosting]
    baseline_params: {gradient_boosting: {learning_rate: 0.01}}
    ensemble: {seeds: 5, members: [hybrid, gradient_boosting], weights: cross_fit}   # optional
    reference_scores: [saps_i]
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from healthfusion.features.summary import ALL_STATS, SUMMARY_STATS
from healthfusion.models.classical import BASELINES, make_baseline
from healthfusion.training.config import TrainerConfig
from healthfusion.training.privacy import PrivacyConfig
from healthfusion.workflows.config_overrides import (  # noqa: F401 (these are public here too)
    ConfigError,
    expand_environment,
    parse_override,
    read_yaml_config,
    read_yaml_mapping,
    resolve_paths,
    validate_mapping,
)

log = logging.getLogger(__name__)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, so a misspelt setting never passes silently."""

    model_config = ConfigDict(extra="forbid")


class SourceSpec(StrictModel):
    """Where stays come from: a registered source reading raw files, or a saved cohort folder."""

    source: str | None = None
    path: Path | None = None
    cohort: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> SourceSpec:
        if (self.cohort is None) == (self.source is None):
            raise ValueError("give either 'source' (+ 'path') or 'cohort' (a cohort folder), not both or neither")
        if self.source is not None and self.path is None:
            raise ValueError(f"source {self.source!r} needs 'path': the folder or file of its raw files (for "
                             "synthetic, the folder to write the generated cohort to)")
        return self


#: ``quick:`` of every run config kind (``--quick`` on the command line sets it).
QUICK_DESCRIPTION = ("A quick smoke run (--quick): the config kind's QUICK settings (few stays, 1-2 epochs, few "
                     "bootstrap resamples) applied over the file's own; recorded so the run folder says so.")


class SplitSpec(StrictModel):
    """How the main cohort's stays are split: at random by patient (``method: random``, the fractions, stratified by
    the label), or by the cohort's own split column (``split: predefined``, short for ``{method: predefined}``:
    MedMNIST train/val/test, MEDS train/tuning/held_out; see :func:`healthfusion.data.splits.predefined_split`).
    A run without test stays (``test: 0`` or a cohort without a test split, and no ``data.test``) trains and
    validates only: its report says so, and ``healthfusion predict`` scores external data later."""

    method: Literal["random", "predefined"] = Field(
        "random", description="random: patient-level split by the fractions; predefined: the stays' own split column.")
    column: str = Field("split", description="With method: predefined, the stays' column holding each stay's split.")
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in ("random", "predefined"):
                raise ValueError(f"data.split is {value!r}; write `split: predefined`, `split: random` or a mapping "
                                 "such as {train: 0.7, val: 0.15, test: 0.15}")
            return {"method": value}
        return value

    @model_validator(mode="after")
    def _fractions(self) -> SplitSpec:
        if self.method == "predefined":
            given = sorted(k for k in ("train", "val", "test")  # a saved run's config.yaml lists the defaults
                           if k in self.model_fields_set and getattr(self, k) != type(self).model_fields[k].default)
            if given:
                raise ValueError(f"split fractions {given} do not apply to method: predefined (the cohort's column "
                                 f"{self.column!r} decides); remove them")
        return self


class DataSpec(SourceSpec):
    """The run's data: one source (``source`` + ``path``, or ``cohort``) or several pooled (``sources``), the label,
    the split and an optional external test set."""

    sources: list[SourceSpec] = Field(
        default_factory=list, description="Several sources pooled into one cohort (e.g. PhysioNet 2012 sets A and B, "
        "several hospitals' folders) instead of source/path/cohort; stay ids must be distinct across them, and each "
        "stay's entry is named in the stays' 'source' column (a domain of the subgroup audit).")
    label: str
    max_stays: int | None = Field(None, ge=10, description="Use at most this many stays, whole patients sampled with "
                                  "split.seed (a smoke run, a learning curve); null: all. data.test is not sampled.")
    split: SplitSpec = Field(default_factory=SplitSpec)
    test: SourceSpec | list[SourceSpec] | None = Field(
        None, description="External test set(s): all their stays are test stays. A list is pooled (distinct stay ids) "
        "and each entry is also scored and reported on its own (a row per test set).")

    @property
    def test_sources(self) -> list[SourceSpec]:
        """``test`` as a list (empty without external test sets)."""
        if self.test is None:
            return []
        return list(self.test) if isinstance(self.test, list) else [self.test]

    @model_validator(mode="after")
    def _one(self) -> DataSpec:  # replaces SourceSpec's check: data.sources is a third way to name the data
        if not self.sources:
            return super()._one()
        given = [k for k in ("source", "path", "cohort") if getattr(self, k) is not None] + (
            ["options"] if self.options else [])
        if given:
            raise ValueError(f"give either 'sources' (a list of sources to pool) or source/path/cohort, not both; "
                             f"move {given} into the entries of 'sources'")
        return self


class FeatureSpec(StrictModel):
    modalities: list[Literal["ts", "static", "codes", "text", "image"]] = Field(default_factory=lambda: ["ts", "static"])
    hours: float = 48.0
    step: float = 1.0
    min_count: int = 10
    image_size: int = 28
    code_min_count: int = 5
    text_buckets: int = 16384
    summary: bool = False  # wide & deep: per-variable window summaries of the series appended to the static input
    text_model: Path | None = None  # a local Hugging Face model folder: notes are tokenized for it (not hashed)
    text_max_length: int = Field(128, ge=2)
    # per-variable statistics of the wide input (summary: true) and of the baselines' engineered features
    summary_stats: list[str] = Field(default_factory=lambda: list(SUMMARY_STATS), min_length=1)

    @model_validator(mode="after")
    def _stats(self) -> FeatureSpec:
        unknown = [s for s in self.summary_stats if s not in ALL_STATS]
        if unknown:
            raise ValueError(f"unknown summary_stats {unknown}; choose from {list(ALL_STATS)}")
        if len(set(self.summary_stats)) != len(self.summary_stats):
            raise ValueError(f"summary_stats lists a statistic twice: {self.summary_stats}")
        return self


def check_transformer_width(ts_encoder: str, hidden: int) -> None:
    """A run config's ``model.ts_encoder: transformer`` uses ``model.hidden`` as its width over 4 attention heads."""
    if ts_encoder == "transformer" and hidden % 4:
        raise ValueError(f"model.ts_encoder: transformer uses hidden as its width over 4 attention heads, so "
                         f"model.hidden must be a multiple of 4; got {hidden}")


class ImageEncoderSpec(StrictModel):
    """The CNN image encoder's own settings (``model.image``), apart from the fusion width ``model.hidden``."""

    channels: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1,
                                description="Output channels of each CNN block (one max-pool 2 per block).")
    width: int | None = Field(None, ge=1, description="Length of the CNN's image feature vector (default: "
                              "model.hidden).")
    block: Literal["plain", "double", "residual"] = Field(
        "plain", description="CNN blocks: plain (one conv 3x3 + BN + ReLU), double (two, VGG-style) or residual "
        "(two as a ResNet basic block).")
    tta: Literal["none", "flip"] = Field(
        "none", description="Test-time augmentation: flip averages the CNN's image feature over each image and its "
        "left-right mirror when scoring (validation, test, predict, serve); training is unchanged.")

    @model_validator(mode="after")
    def _positive(self) -> ImageEncoderSpec:
        if any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive, got {self.channels}")
        return self


class ModelSpec(StrictModel):
    """The hybrid's architecture. ``pretrained`` maps modalities to pretrained encoders (registry name or folder,
    see :mod:`healthfusion.models.registry`); those encoders keep their own size and preprocessing, and
    ``training.finetune`` says how they are fine-tuned (its ``modules`` default to the pretrained encoders)."""

    fusion: Literal["concat", "gated", "attention"] = "concat"
    hidden: int = Field(32, ge=1)
    lstm_layers: int = Field(1, ge=1)
    bidirectional: bool = False
    # time-series encoder; transformer: d_model = hidden (a multiple of 4), 2 layers, 4 heads (lstm_layers and
    # bidirectional are LSTM-only), see healthfusion.workflows.modeling.hybrid_config
    ts_encoder: Literal["lstm", "transformer"] = "lstm"
    image: ImageEncoderSpec = Field(default_factory=ImageEncoderSpec)
    # deprecated: model.image.block (a value given here is moved there, with a DeprecationWarning)
    image_block: Literal["plain", "double", "residual"] | None = None
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    pretrained: dict[Literal["ts", "static", "codes", "text", "image"], str] = Field(default_factory=dict)
    pretrained_root: Path | None = None
    text_pooling: Literal["mean", "cls"] = "mean"  # with features.text_model: how token states become one vector
    text_freeze: bool = False  # with features.text_model: keep the language model's weights fixed

    @model_validator(mode="after")
    def _transformer_width(self) -> ModelSpec:
        check_transformer_width(self.ts_encoder, self.hidden)
        if self.image_block is not None:
            warnings.warn(f"model.image_block is deprecated; write model.image: {{block: {self.image_block}}} "
                          f"(this config's value is used)", DeprecationWarning, stacklevel=2)
            log.warning("model.image_block is deprecated: use model.image.block (%s is used)", self.image_block)
            self.image = self.image.model_copy(update={"block": self.image_block})
            self.image_block = None
        return self


def tuned_section(name: str) -> str:
    """``model`` or ``training``: the run config section of tunable field ``name`` (KeyError when neither)."""
    return next(section for section, cls in TUNABLE_SECTIONS.items() if name in cls.model_fields)


def tuned_number_type(name: str) -> type | None:
    """``int`` or ``float`` when tunable field ``name`` takes numbers (None allowed besides), else None."""
    cls = TUNABLE_SECTIONS[tuned_section(name)]
    annotation = cls.model_fields[name].annotation
    kinds = set(getattr(annotation, "__args__", (annotation,))) - {type(None)}
    return kinds.pop() if len(kinds) == 1 and kinds <= {int, float} else None


class SearchRange(StrictModel):
    """A numeric range of a search space: ``{low: 1e-4, high: 1e-2, log: true}``; integer model fields draw
    integers (``step`` 1 unless set)."""

    low: float = Field(description="Smallest value tried.")
    high: float = Field(description="Largest value tried.")
    log: bool = Field(False, description="Draw on a log scale (e.g. learning rates); needs low > 0.")
    step: float | None = Field(None, gt=0, description="Spacing of the values tried (none: continuous; "
                                                       "1 for integer fields).")

    @model_validator(mode="after")
    def _order(self) -> SearchRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high}); swap them")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step; drop step or set log: false")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}; raise low or set log: false")
        return self


#: the run config sections whose fields a ``tuning`` space may name (the names do not overlap)
TUNABLE_SECTIONS = {"model": ModelSpec, "training": TrainerConfig}


class TuningSpec(StrictModel):
    """Hyperparameter search over ``model`` and ``training`` fields by patient-level K-fold CV on the training stays only
    (see :mod:`healthfusion.workflows.search`; needs ``healthfusion[tune]``).

    ``space`` maps a model or training field (e.g. ``hidden``, ``lr``) to a list (categorical) or a :class:`SearchRange`; the older form
    ``{grid: {field: [values]}, folds: K}`` is the ``grid`` sampler over those lists."""

    sampler: Literal["tpe", "random", "grid"] | None = Field(
        None, description="Optuna sampler: tpe, random or grid (every combination of list values). "
                          "Default: grid with a grid section, else tpe.")
    trials: int | None = Field(None, ge=1, description="Trials in the study (a resumed study counts its finished "
                                                       "trials). Default: every grid point for grid, 40 otherwise.")
    folds: int = Field(3, ge=2, description="Cross-validation folds over the training stays.")
    storage: Path | None = Field(None, description="SQLite file of the study (relative to the config file); a "
                                                   "re-run resumes it and does not re-run finished trials.")
    study: str | None = Field(None, description="Study name in the storage (default: the run's name).")
    pruning: bool | None = Field(None, description="Stop a trial early when its running mean fold AUROC is "
                                                   "below the median of earlier trials at that fold (Optuna's "
                                                   "median pruner). Default: true for tpe and random, false for "
                                                   "grid.")
    space: dict[str, list[Any] | SearchRange] = Field(
        default_factory=dict, description="Model or training field -> list of values (categorical) or {low, high, log, step}.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Older form of a grid search: model "
                                       "field -> list of values, e.g. {hidden: [32, 64]} (the grid sampler).")

    @model_validator(mode="after")
    def _known(self) -> TuningSpec:
        if self.grid and self.space:
            raise ValueError("tuning has both `grid` and `space`; keep one (write the grid as `space` with "
                             "`sampler: grid`)")
        known = {name for cls in TUNABLE_SECTIONS.values() for name in cls.model_fields}
        unknown = (set(self.grid) | set(self.space)) - known
        if unknown:
            raise ValueError(f"tuning keys {sorted(unknown)} are not fields of `model` {list(ModelSpec.model_fields)} "
                             f"or `training` {list(TrainerConfig.model_fields)}")
        if not self.grid and not self.space:
            raise ValueError("tuning needs a `space` (model field -> list or {low, high}), e.g. "
                             "space: {hidden: [32, 64]}")
        not_numeric = [k for k, v in self.search_space.items()
                       if not isinstance(v, list) and tuned_number_type(k) is None]
        if not_numeric:
            raise ValueError(f"tuning ranges {{low, high}} fit numeric fields only; list the values of "
                             f"{not_numeric} instead")
        if self.resolved_sampler == "grid":
            ranges = [k for k, v in self.search_space.items() if not isinstance(v, list)]
            if ranges:
                raise ValueError(f"the grid sampler takes lists of values only; {ranges} are ranges. "
                                 f"List the values, or use sampler: tpe or random")
        return self

    @property
    def search_space(self) -> dict[str, list[Any] | SearchRange]:
        """``space``, or the older ``grid`` form."""
        return dict(self.grid or self.space)

    @property
    def resolved_sampler(self) -> str:
        return self.sampler or ("grid" if self.grid else "tpe")


class EnsembleSpec(StrictModel):
    """The run's model as an ensemble (see :mod:`healthfusion.workflows.ensemble`): ``seeds`` hybrid networks
    (trained with seeds ``training.seed``, ``training.seed + 1``, ...; their logits averaged) plus, with
    ``gradient_boosting`` among ``members``, the boosting baseline on the engineered features; members are
    combined with convex weights chosen by validation log-loss.

    ``weights``: ``validation`` fits them on the validation stays (cheap; the hybrid also early-stops on those
    stays, which flatters it a little), ``cross_fit`` on out-of-fold predictions over the training + validation
    stays (``folds`` extra hybrid and boosting fits, with the epoch and tree counts of the final members),
    ``uniform`` takes equal weights. ``fit``: ``grid`` chooses them on a grid over the simplex by log-loss,
    ``stacking`` by a logistic regression on the members' log-odds with an intercept and non-negative
    coefficients, which does not collapse onto the best-calibrated member when another adds information
    (:func:`healthfusion.models.ensemble.fit_weights`)."""

    seeds: int = Field(1, ge=1)
    members: list[Literal["hybrid", "gradient_boosting"]] = Field(
        default_factory=lambda: ["hybrid", "gradient_boosting"])
    weights: Literal["validation", "cross_fit", "uniform"] = "validation"
    folds: int = Field(5, ge=2)
    combine: Literal["logit", "probability"] = "logit"
    fit: Literal["grid", "stacking"] = "grid"

    @model_validator(mode="after")
    def _hybrid(self) -> EnsembleSpec:
        if "hybrid" not in self.members:
            raise ValueError(f"ensemble.members must include 'hybrid' (the ensemble is built around it), got "
                             f"{self.members}")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"ensemble.members lists a member twice: {self.members}")
        return self


class EvaluationSpec(StrictModel):
    n_boot: int = Field(1000, ge=1)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # se_ppv: maximise min(sensitivity, PPV), the PhysioNet Challenge 2012 event 1 score
    operating_point: Literal["youden", "f1", "sensitivity", "se_ppv"] = "youden"
    target_sensitivity: float | None = None
    # post-hoc calibrator of a binary model, fitted on the validation stays and saved in the model folder; auto picks
    # the lowest held-out log loss among none, temperature, platt and isotonic (5-fold CV within validation)
    calibration: Literal["auto", "none", "temperature", "platt", "isotonic"] = Field(
        "auto", description="Calibrator of a binary model, fitted on the validation stays only (auto: the lowest "
        "5-fold held-out log loss among none, temperature, Platt and isotonic).")
    audit: bool = True  # explanations, calibration, subgroups and impact into explanations/ and audit/
    report_identifiers: bool = Field(
        False, description="Show stay ids in the report's per-stay explanations (internal use only); by default the "
        "report numbers the stays.")


class TrackingSpec(StrictModel):
    """Record the finished run in MLflow (see :mod:`healthfusion.tracking`; needs ``healthfusion[track]``)."""

    uri: str | None = None
    experiment: str | None = None
    log_model: bool = True


class RunConfig(StrictModel):
    #: what ``--quick`` sets (see :func:`apply_quick`); ``--set`` still wins
    QUICK: ClassVar[dict[str, Any]] = {"data.max_stays": 300, "training.max_epochs": 2, "evaluation.n_boot": 20,
                                       "ensemble.seeds": 1, "ensemble.folds": 2, "tuning.folds": 2,
                                       "tuning.trials": 2}

    name: str = "run"
    out: Path | None = None
    quick: bool = Field(False, description=QUICK_DESCRIPTION)
    data: DataSpec
    features: FeatureSpec = Field(default_factory=FeatureSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainerConfig = Field(default_factory=TrainerConfig)
    tuning: TuningSpec | None = None
    baselines: list[str] = Field(default_factory=lambda: ["logistic_regression"])
    # parameters of a baseline's model step, e.g. {gradient_boosting: {learning_rate: 0.01, reg_lambda: 10}}
    baseline_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ensemble: EnsembleSpec | None = None
    reference_scores: list[str] = Field(default_factory=list)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    tracking: TrackingSpec | None = None
    privacy: PrivacyConfig | None = Field(
        None, description="DP-SGD for the hybrid (extra dp): target epsilon at delta, clipping norm, accountant; see "
        "healthfusion.training.privacy.")

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.privacy is not None and (self.ensemble is not None or self.tuning is not None):
            raise ValueError("privacy (DP-SGD) trains one hybrid network and accounts for its budget alone; remove "
                             "the 'ensemble' and 'tuning' sections (each extra fit on the same stays spends more "
                             "budget)")
        if (self.ensemble is not None and "gradient_boosting" in self.ensemble.members
                and not {"ts", "static"} & set(self.features.modalities)):
            raise ValueError(f"ensemble.members has gradient_boosting, which needs the ts or static modality; "
                             f"features.modalities is {self.features.modalities}. Set ensemble.members: [hybrid] "
                             "(a bag of hybrid networks)")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
        for name, params in self.baseline_params.items():
            if name not in BASELINES:
                raise ValueError(f"baseline_params names an unknown baseline {name!r}; choose from {list(BASELINES)}")
            known = {k.removeprefix("model__") for k in make_baseline(name).get_params() if k.startswith("model__")}
            bad = sorted(set(params) - known)
            if bad:
                raise ValueError(f"baseline_params.{name}: unknown parameter(s) {bad}; {name} takes {sorted(known)}")
        return self


def load_run_config(path: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None,
                    quick: bool = False) -> RunConfig:
    """Read and validate a run config (``overrides``, ``out`` and ``quick`` as in :func:`read_yaml_config`);
    relative paths (``out``, data, text model) are resolved against the config file's folder.

    Raises
    ------
    ConfigError
        Naming the file and, for validation errors, each offending key.
    """
    return resolve_run_paths(read_yaml_config(path, RunConfig, overrides, out, quick), Path(path).parent)


def run_config_from_mapping(raw: dict, base: str | Path = ".", overrides: Sequence[str] = (),
                            out: str | Path | None = None, quick: bool = False) -> RunConfig:
    """A run config from a mapping built in Python (the settings of a RUN.yaml), validated and with ``overrides``,
    ``out`` and ``quick`` as :func:`load_run_config` applies them; relative paths are resolved against ``base``
    (default: the working directory).

    Raises
    ------
    ConfigError
        Not a mapping, or invalid settings (each offending key named).
    """
    base = Path(base)
    return resolve_run_paths(validate_mapping(raw, RunConfig, base, "run config", overrides, out, quick), base)


def resolve_run_paths(config: RunConfig, base: Path) -> RunConfig:
    """``config`` with its relative data, text-model and tuning-storage paths resolved against ``base``."""
    for spec in (config.data, *config.data.sources, *config.data.test_sources):
        resolve_paths(base, spec, ("path", "cohort"))
    resolve_paths(base, config.features, ("text_model",))
    resolve_paths(base, config.tuning, ("storage",))
    return config
