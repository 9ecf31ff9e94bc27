"""``healthfusion multitask --config MT.yaml``: train one multimodal multitask model (M3H) on tasks of any kind,
measure each task, the task-interdependence matrix (TIM) and, optionally, single-task models of the same budget.

Example ``MT.yaml``::

    name: physionet-m3h
    data:
      source: physionet2012
      path: ../shared/data/physionet2012/set-a.tar.gz
      split: {train: 0.7, val: 0.15, test: 0.15, seed: 0}
    features: {modalities: [ts, static], hours: 48, step: 2}
    tasks:
      - {name: death, kind: binary, source: {label: in_hospital_death}}
      - {name: los_gt_3d, kind: binary, source: {label: length_of_stay, above: 3}}
      - {name: los, kind: regression, source: {label: length_of_stay}}
      - {name: icu_type, kind: multiclass, source: {static: ICUType}}   # ICUType leaves the static inputs
      - {name: phenotype, kind: clustering, n_clusters: 4}
    training: {max_epochs: 20}            # the TrainerConfig of `train` (device, mixed_precision, ...)
    objective: {weighting: uncertainty}   # weighting, cluster_warmup_epochs, cluster_balance, criterion
    tim: {ablation: attention}
    comparison: {single_task: true, seeds: [0, 1, 2]}

Label sources (``source``), exactly one of:

* ``label: NAME`` a label of the cohort (its kind must match the task's; ``above: X`` turns a regression label into
  the binary task ``label > X``);
* ``static: COLUMN`` a static column, as a multiclass target; the column is removed from the static inputs;
* ``stays: COLUMN`` a column of the stays table (e.g. ``care_unit``) as a multiclass target;
* ``codes: icd9_groups`` the stay's ICD-9 codes (any time: it is a label, not a feature) grouped into
  :data:`~healthfusion.workflows.multitask_labels.ICD9_GROUPS`, as a multilabel target; a stay without codes has a missing label.

No input may carry a task's label: every static column a task's label source is, or is computed from (PhysioNet
``care_unit`` <- ``ICUType``; see :func:`~healthfusion.workflows.multitask_labels.label_source_inputs`), leaves the
static inputs of every task, and a ``codes:`` task with ``codes`` in ``features.modalities`` is a config error.

The run folder holds ``config.yaml``, ``tasks.csv`` (the per-task table), ``tim_attention.csv``/``.png``,
``tim_ablation.csv``/``.png`` (and ``tim_retrain.csv``/``.png`` with retraining ablation), ``clusters.json``,
``comparison.csv`` (per task and seed), ``metrics.json``, ``history.json`` and ``model/`` (a saved
:class:`~healthfusion.models.multitask.MultitaskModel` with the featurizer state in ``preprocessing.json``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from healthfusion.data.splits import split_patients
from healthfusion.evaluation.tim import ablation_tim, attention_tim, plot_tim, task_metrics, tim_agreement
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.features.tabular import StaticTransformer
from healthfusion.files import write_csv, write_text
from healthfusion.models.multitask import MultitaskModel, MultitaskModelConfig, TaskKind, TaskSpec
from healthfusion.training.config import TrainerConfig, training_section
from healthfusion.training.losses.multitask import MultitaskObjectiveConfig
from healthfusion.training.multitask import predict_multitask, target_key
from healthfusion.workflows.common import make_featurizer, open_source, sample_stays
from healthfusion.workflows.config import (
    QUICK_DESCRIPTION,
    FeatureSpec,
    SourceSpec,
    SplitSpec,
    StrictModel,
    check_transformer_width,
    read_yaml_config,
    resolve_paths,
)
from healthfusion.workflows.modeling import hybrid_config, load_pretrained, use_pretrained_preprocessing
from healthfusion.workflows.multitask_fit import FitProgress
from healthfusion.workflows.multitask_labels import extract_labels, label_source_inputs
from healthfusion.workflows.multitask_tables import (
    cluster_report,
    improvement_summary,
    mean_frame,
    task_table,
)
from healthfusion.workflows.runfolder import (
    check_run_folder,
    claim_run_folder,
    inputs_inside,
    record_artefacts,
    source_paths,
    write_run_config,
)

log = logging.getLogger(__name__)


class LabelSource(StrictModel):
    """Where a task's labels come from (exactly one of ``label``, ``static``, ``stays``, ``codes``)."""

    label: str | None = None
    above: float | None = None
    static: str | None = None
    stays: str | None = None
    codes: Literal["icd9_groups"] | None = None

    @model_validator(mode="after")
    def _one(self) -> LabelSource:
        given = [k for k in ("label", "static", "stays", "codes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of label, static, stays, codes; got {given or 'none'}")
        if self.above is not None and self.label is None:
            raise ValueError("'above' turns a regression 'label' into a binary task; it needs 'label'")
        return self


class TaskConfig(StrictModel):
    """One task: ``name``, ``kind``, label ``source`` (none for clustering), loss ``weight``, input ``modalities``
    (default: all), ``n_clusters`` (clustering only)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: TaskKind
    source: LabelSource | None = None
    weight: float = Field(1.0, gt=0)
    modalities: list[Literal["ts", "static", "codes", "text", "image"]] = Field(default_factory=list)
    n_clusters: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.kind == "clustering":
            if self.source is not None:
                raise ValueError(f"task {self.name!r}: a clustering task learns without labels; remove 'source'")
            if self.n_clusters is None:
                self.n_clusters = 4
        else:
            if self.source is None:
                raise ValueError(f"task {self.name!r}: a {self.kind} task needs a label 'source'")
            if self.n_clusters is not None:
                raise ValueError(f"task {self.name!r}: n_clusters is for clustering tasks only")
        return self


class MultitaskDataSpec(SourceSpec):
    split: SplitSpec = Field(default_factory=SplitSpec)
    max_stays: int | None = Field(None, ge=10)


class MultitaskModelSpec(StrictModel):
    fusion: Literal["concat", "gated", "attention"] = "concat"
    hidden: int = Field(32, ge=1)
    task_dim: int = Field(32, ge=1)
    lstm_layers: int = Field(1, ge=1)
    ts_encoder: Literal["lstm", "transformer"] = "lstm"  # as a run config's model.ts_encoder
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    task_attention: bool = True
    gate_init: float = 0.0
    cluster_gradient: bool = True
    pretrained: dict[Literal["ts", "static", "codes", "text", "image"], str] = Field(default_factory=dict)
    pretrained_root: Path | None = None

    @model_validator(mode="after")
    def _transformer_width(self) -> MultitaskModelSpec:
        check_transformer_width(self.ts_encoder, self.hidden)
        return self


class TimSpec(StrictModel):
    """``ablation``: how the TIM is checked (see :mod:`healthfusion.evaluation.tim`); ``retrain_seeds``: the retraining
    ablation (one model per task left out) runs on the first this-many seeds only (default: all)."""

    ablation: Literal["attention", "retrain", "both", "none"] = "attention"
    retrain_seeds: int | None = Field(None, ge=1)


class ComparisonSpec(StrictModel):
    single_task: bool = False
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)


#: What ``training:`` keys left out default to.
MULTITASK_PRESET: dict[str, Any] = {"max_epochs": 30, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4,
                                    "patience": 5, "grad_clip": 5.0, "monitor": "val_loss"}
#: ``training:`` keys of earlier versions that now live in ``objective:`` (``monitor: sum|relative`` is ``criterion``).
OBJECTIVE_KEYS = ("weighting", "cluster_warmup_epochs", "cluster_balance")


class MultitaskConfig(StrictModel):
    """The ``healthfusion multitask`` run configuration (unknown keys are errors at every level)."""

    #: what ``--quick`` sets (see :func:`~healthfusion.workflows.config.apply_quick`); ``--set`` still wins
    QUICK: ClassVar[dict[str, Any]] = {"data.max_stays": 300, "training.max_epochs": 2, "comparison.seeds": [0],
                                       "n_boot": 20, "tim.retrain_seeds": 1}

    name: str = "multitask"
    out: Path | None = None
    quick: bool = Field(False, description=QUICK_DESCRIPTION)
    data: MultitaskDataSpec
    features: FeatureSpec = Field(default_factory=FeatureSpec)
    exclude_static: list[str] = Field(default_factory=list)
    tasks: list[TaskConfig] = Field(min_length=1)
    model: MultitaskModelSpec = Field(default_factory=MultitaskModelSpec)
    training: TrainerConfig = Field(default_factory=lambda: TrainerConfig(**MULTITASK_PRESET))
    objective: MultitaskObjectiveConfig = Field(
        default_factory=MultitaskObjectiveConfig,
        description="The multitask loss: task weighting, the clustering objective's warm-up and balance, and the "
        "early-stopping criterion.")
    tim: TimSpec = Field(default_factory=TimSpec)
    comparison: ComparisonSpec = Field(default_factory=ComparisonSpec)
    n_boot: int = Field(200, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _earlier_keys(cls, data):
        """Move the objective keys an earlier ``training:`` section held into ``objective:`` (with a warning)."""
        if not isinstance(data, dict) or not isinstance(data.get("training"), dict):
            return data
        training, objective = dict(data["training"]), dict(data.get("objective") or {})
        moved = {k: training.pop(k) for k in OBJECTIVE_KEYS if k in training}
        if training.get("monitor") in ("sum", "relative"):
            moved["criterion"] = training.pop("monitor")
        if moved:
            both = sorted(set(moved) & set(objective))
            if both:
                raise ValueError(f"{both} given in both training: and objective:; keep them in objective:")
            log.warning("training: keys %s are read as objective: %s; move them there.", sorted(moved), moved)
            data = {**data, "training": training, "objective": {**objective, **moved}}
        return data

    @field_validator("training", mode="before")
    @classmethod
    def _preset(cls, value):
        return training_section(value, MULTITASK_PRESET, "training")

    @model_validator(mode="after")
    def _check(self) -> MultitaskConfig:
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique; {dup} repeat")
        for t in self.tasks:
            missing = [m for m in t.modalities if m not in self.features.modalities]
            if missing:
                raise ValueError(f"task {t.name!r} reads {missing}, not in features.modalities "
                                 f"{self.features.modalities}")
            if t.source is not None and t.source.codes is not None and "codes" in self.features.modalities:
                raise ValueError(f"task {t.name!r} is labelled from the codes table (codes: {t.source.codes}), so "
                                 "the codes input would carry its label: remove 'codes' from features.modalities")
        return self


def load_multitask_config(path: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None,
                          quick: bool = False) -> MultitaskConfig:
    """Read and validate ``MT.yaml`` (``overrides``, ``out`` and ``quick`` as in
    :func:`~healthfusion.workflows.config.read_yaml_config`); relative paths resolve against the file's folder.

    Raises
    ------
    ConfigError
        Naming the file and each offending key.
    """
    config = read_yaml_config(path, MultitaskConfig, overrides, out, quick)
    resolve_paths(Path(path).parent, config.data, ("path", "cohort"))
    resolve_paths(Path(path).parent, config.model, ("pretrained_root",))
    return config


# ------------------------------------------------------------------------------------------------ model build
def _task_specs(config: MultitaskConfig, labels: dict, classes: dict, train_rows: np.ndarray,
                only: Sequence[str] | None = None) -> tuple[TaskSpec, ...]:
    specs = []
    for t in config.tasks:
        if only is not None and t.name not in only:
            continue
        extra: dict[str, Any] = {}
        if t.kind == "clustering":
            extra["n_outputs"] = t.n_clusters
        elif t.kind in ("multiclass", "multilabel"):
            extra["n_outputs"] = len(classes[t.name])
        elif t.kind == "regression":
            y = labels[t.name][train_rows]
            y = y[~np.isnan(y)]
            if len(y) < 2:
                raise ValueError(f"Task {t.name!r} has {len(y)} labelled training stays; need at least 2.")
            extra.update(target_shift=float(y.mean()), target_scale=float(max(y.std(), 1e-6)))
        specs.append(TaskSpec(name=t.name, kind=t.kind, modalities=tuple(t.modalities), **extra))
    return tuple(specs)


def build_model(config: MultitaskConfig, feat: CohortFeaturizer, tasks: tuple[TaskSpec, ...], seed: int = 0,
                task_attention: bool | None = None, loaded: dict | None = None) -> MultitaskModel:
    """A :class:`MultitaskModel` with encoders sized from the fitted featurizer (as the hybrid's), initialised from
    ``seed`` (so a run is reproducible whatever was trained before it); the ``loaded`` pretrained encoders (from
    :func:`~healthfusion.workflows.modeling.load_pretrained`) replace their modalities' encoders, weights
    included."""
    torch.manual_seed(seed)
    spec = config.model
    loaded = loaded or {}
    enc = hybrid_config(feat, hidden=spec.hidden, lstm_layers=spec.lstm_layers, dropout=spec.dropout,
                        ts_encoder=spec.ts_encoder, pretrained={m: e.config for m, (e, _, _) in loaded.items()})
    encoders = {m: getattr(enc, m) for m in enc.modalities}
    attention = spec.task_attention if task_attention is None else task_attention
    model = MultitaskModel(MultitaskModelConfig(**encoders, tasks=tasks, fusion=spec.fusion, fusion_dim=spec.hidden,
                                                task_dim=spec.task_dim, dropout=spec.dropout,
                                                task_attention=attention and len(tasks) > 1,
                                                gate_init=spec.gate_init,
                                                cluster_gradient=spec.cluster_gradient or len(tasks) == 1))
    for m, (e, _, _) in loaded.items():
        model.backbone.encoders[m].load_state_dict(e.state_dict(), strict=True)
    return model


# ------------------------------------------------------------------------------------------------ evaluation
def _evaluate(model: MultitaskModel, data, seed: int, removed: Sequence[str] = ()) -> tuple[dict, dict]:
    pred = predict_multitask(model, data, removed=removed)
    metrics = {}
    for i, task in enumerate(model.config.tasks):
        rows = pred["task_present"][:, i]
        p = pred["predictions"][task.name][rows]
        if task.kind == "clustering":
            metrics[task.name] = task_metrics("clustering", None, p, embedding=pred["representations"][rows, i],
                                              seed=seed)
        else:
            metrics[task.name] = task_metrics(task.kind, data[target_key(task.name)][rows], p)
    return metrics, pred


def _stratifier(config: MultitaskConfig, labels: dict, ids: list[str]) -> pd.Series | None:
    for t in config.tasks:
        if t.kind == "binary":
            return pd.Series(labels[t.name], index=ids)
    return None


def prepare(config: MultitaskConfig, console=None) -> dict:
    """Cohort, labels, split and fitted featurizer of a run, and the train/val/test datasets with targets."""
    cohort = open_source(config.data, console)
    cohort = sample_stays(cohort, config.data.max_stays, config.data.split.seed)
    ids = [str(s) for s in cohort.stay_ids]
    labels, classes = extract_labels(cohort, config.tasks, ids)
    split = config.data.split
    fractions = {"train": split.train, "val": split.val, "test": split.test}
    assignment = split_patients(cohort.stays, fractions, seed=split.seed,
                                stratify=_stratifier(config, labels, ids)).reindex(ids)
    # no input may carry a task's label: the static columns its label source is, or is computed from
    excluded = list(dict.fromkeys([*config.exclude_static, *label_source_inputs(cohort, config.tasks)]))
    if excluded:
        log.info("Static inputs left out (label sources of tasks, or exclude_static): %s", excluded)
    feat = make_featurizer(config.features, None)
    if "static" in config.features.modalities:
        feat.transformers["static"] = StaticTransformer(exclude=excluded)
    train_ids = [s for s in ids if assignment[s] == "train"]
    feat.fit(cohort, train_ids)
    loaded = load_pretrained(config.model.pretrained, config.model.pretrained_root) if config.model.pretrained else {}
    use_pretrained_preprocessing(feat, loaded)  # a pretrained encoder sees its inputs as during pretraining
    data = feat.transform(cohort, ids, with_target=False)
    data = data.with_arrays(**{target_key(name): arr for name, arr in labels.items()})
    split_arr = assignment.to_numpy()
    usable = data.usable_rows()
    parts = {s: data[(split_arr == s) & usable] for s in ("train", "val", "test")}
    for s, part in parts.items():
        if len(part) == 0:
            raise ValueError(f"The {s} split has no usable stay; change data.split or use more stays.")
    return {"cohort": cohort, "labels": labels, "classes": classes, "featurizer": feat, "excluded": excluded,
            "loaded": loaded, "data": parts, "n_unusable": int((~usable).sum()), "train_rows": split_arr == "train"}


def run_multitask(config: MultitaskConfig, console=None, resume: bool = False, overwrite: bool = False) -> Path:
    """Run the whole multitask job and write the run folder (see the module docstring); returns its path.

    The run folder must be new or empty (data inside it is kept); ``overwrite`` clears it once the data has been
    read. Files are written atomically and recorded in ``artefacts.json`` as artefacts of ``model/``
    (:mod:`healthfusion.workflows.runfolder`), so ``report`` refuses a folder that mixes two runs.

    Every fit keeps its newest epoch in ``RUN_DIR/checkpoints/`` until the run ends; with ``resume`` an interrupted
    run (same config, same ``out``) continues from there: finished fits restore their final state, the interrupted
    one goes on from its last epoch, and the results equal an uninterrupted run.

    Raises
    ------
    ValueError
        On bad labels, splits or data (messages name the task, column or file), or ``resume`` without ``out``;
        RunFolderError on a non-empty run folder without ``overwrite`` or ``resume``.
    """
    if resume and config.out is None:
        raise ValueError("--resume continues the run folder of the config's out:; set out: to the interrupted run.")
    start = time.time()
    run_dir = config.out or Path("runs") / f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(run_dir)
    inputs = inputs_inside(run_dir, source_paths([config.data]))
    if not resume:  # an interrupted run's folder is continued, not refused
        check_run_folder(run_dir, overwrite, keep=inputs)
    prep = prepare(config, console)
    if not resume:
        claim_run_folder(run_dir, overwrite, keep=inputs)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(config.model_dump(mode="json"), run_dir)  # paths relative to the run folder
    ckpt = run_dir / "checkpoints"
    train, val, test = (prep["data"][s] for s in ("train", "val", "test"))
    kinds = {t.name: t.kind for t in config.tasks}
    names = [t.name for t in config.tasks]
    weights = {t.name: t.weight for t in config.tasks}
    specs = _task_specs(config, prep["labels"], prep["classes"], prep["train_rows"])
    rows, tims, abl, retrain, histories = [], [], [], [], {}
    main_model = main_pred = None
    with FitProgress(console) as progress:
        for seed in config.comparison.seeds:
            model = build_model(config, prep["featurizer"], specs, seed, loaded=prep["loaded"])
            histories[f"multitask/seed{seed}"] = progress.fit(f"seed {seed}: multitask", model, train, val, config,
                                                              seed, weights, ckpt / f"multitask-seed{seed}", resume)
            full, pred = _evaluate(model, test, seed)
            if main_model is None:
                main_model, main_pred = model, pred
            tims.append(attention_tim(names, pred["task_attention"], pred["self_weight"], pred["task_present"]))
            for name in names:
                rows.append({"seed": seed, "model": "multitask", "task": name, **_flat(full[name])})
            if config.tim.ablation in ("attention", "both") and model.attention is not None:
                without = {j: {i: m["main"] for i, m in _evaluate(model, test, seed, removed=[j])[0].items()}
                           for j in names}
                abl.append(ablation_tim(names, kinds, {i: full[i]["main"] for i in names}, without))
            n_retrain = config.tim.retrain_seeds or len(config.comparison.seeds)
            if config.tim.ablation in ("retrain", "both") and len(names) > 1 and len(retrain) < n_retrain:
                without = {}
                for j in names:
                    rest = [s for s in specs if s.name != j]
                    sub = build_model(config, prep["featurizer"], tuple(rest), seed, loaded=prep["loaded"])
                    progress.fit(f"seed {seed}: without {j}", sub, train, val, config, seed,
                                 {k: w for k, w in weights.items() if k != j}, ckpt / f"without-{j}-seed{seed}", resume)
                    without[j] = {i: m["main"] for i, m in _evaluate(sub, test, seed)[0].items()}
                retrain.append(ablation_tim(names, kinds, {i: full[i]["main"] for i in names}, without))
            if config.comparison.single_task:
                for spec in specs:
                    single = build_model(config, prep["featurizer"], (spec,), seed, task_attention=False,
                                         loaded=prep["loaded"])
                    histories[f"single/{spec.name}/seed{seed}"] = progress.fit(
                        f"seed {seed}: single {spec.name}", single, train, val, config, seed, None,
                        ckpt / f"single-{spec.name}-seed{seed}", resume)
                    metrics = _evaluate(single, test, seed)[0][spec.name]
                    rows.append({"seed": seed, "model": "single", "task": spec.name, **_flat(metrics)})
    per_seed = pd.DataFrame(rows)
    table = task_table(per_seed, kinds, main_model, main_pred, test, config.n_boot)
    summary = improvement_summary(per_seed, kinds)
    _write_outputs(run_dir, config, prep, main_model, main_pred, test, per_seed, table, summary, tims, abl, retrain,
                   histories, time.time() - start)
    shutil.rmtree(ckpt, ignore_errors=True)  # the run is complete: nothing left to resume
    record_artefacts(run_dir)
    return run_dir


def _flat(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, list)}


def _write_outputs(run_dir: Path, config, prep, model, pred, test, per_seed, table, summary, tims, abl, retrain,
                   histories, seconds) -> None:
    kinds = {t.name: t.kind for t in config.tasks}
    write_csv(table, run_dir / "tasks.csv", index=False)
    write_csv(per_seed, run_dir / "comparison.csv", index=False)
    matrices = {}
    for stem, frames, title in (("tim_attention", tims, "TIM from attention (share of task i's representation)"),
                                ("tim_ablation", abl, "TIM by attention ablation (relative metric change)"),
                                ("tim_retrain", retrain, "TIM by retraining without task j (relative change)")):
        mean = mean_frame(frames)
        if mean is None:
            continue
        write_csv(mean, run_dir / f"{stem}.csv")
        plot_tim(mean, run_dir / f"{stem}.png", title=title)
        matrices[stem] = mean
    agreement = {k: tim_agreement(matrices["tim_attention"], m) for k, m in matrices.items()
                 if k != "tim_attention" and "tim_attention" in matrices}
    clusters = cluster_report(model, pred, test, kinds)
    write_text(run_dir / "clusters.json", json.dumps(clusters, indent=2, allow_nan=True))
    model.save_pretrained(run_dir / "model", preprocessing_state={
        "featurizer": prep["featurizer"].get_state(),
        "tasks": [t.model_dump(mode="json") for t in config.tasks],
        "classes": prep["classes"],
    })
    metrics = {
        "name": config.name, "seconds": seconds, "seeds": config.comparison.seeds,
        "n": {s: len(d) for s, d in prep["data"].items()}, "n_unusable": prep["n_unusable"],
        "excluded_static": prep["excluded"], "tasks": table.to_dict(orient="records"), "improvement": summary,
        "tim_agreement": agreement, "clusters": clusters,
        "tim": {k: m.to_dict() for k, m in matrices.items()},
    }
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
    write_text(run_dir / "history.json", json.dumps(histories, indent=2, default=_json_default))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
