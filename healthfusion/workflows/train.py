"""``healthfusion train``: fit the hybrid model and the classical baselines on one split, evaluate them together.

A run folder holds ``config.yaml`` (the validated config), ``model/`` (the hybrid, loadable without the data),
``predictions.csv`` (one row per evaluated stay: split, label, each model's probability), ``metrics.json`` and
``comparison.csv`` (every model with bootstrap 95% CIs, at threshold 0.5 and at an operating point chosen on the
validation stays), ``roc.png``/``pr.png``, ``history.json``, ``accounting.csv`` (the input rows' fate), ``domains.csv`` (each
evaluated stay's site, care unit, age group, sex, ethnicity), ``explanations/`` and ``audit/`` (see
:mod:`healthfusion.workflows.audit`). That is a run of a binary label; multiclass and regression labels train
through :mod:`healthfusion.workflows.train_kinds` after the same data preparation (:func:`prepare_run`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.linear_model import LogisticRegression

from healthfusion.data.cohort import Cohort
from healthfusion.data.schema import LabelSpec
from healthfusion.data.sources import get_source
from healthfusion.data.splits import split_patients
from healthfusion.evaluation.metrics import auroc, choose_threshold
from healthfusion.features.codes import CodeTransformer
from healthfusion.features.compose import CohortFeaturizer, engineered_features
from healthfusion.features.image import ImageTransformer
from healthfusion.features.text import HFTokenTransformer, TextTransformer
from healthfusion.features.timeseries import TimeSeriesTransformer
from healthfusion.models.classical import make_baseline
from healthfusion.models.ensemble import EnsembleWeights, fit_weights
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.callbacks import ProgressCallback
from healthfusion.training.privacy import DPSGD, PrivacyConfig, copy_to_plain, make_private_model
from healthfusion.workflows.audit import domain_table, write_audit, write_explanations
from healthfusion.workflows.config import FeatureSpec, ModelSpec, RunConfig, SourceSpec
from healthfusion.workflows.ensemble import (
    BOOSTING,
    RunEnsemble,
    bag_probability,
    combine_members,
    cross_fitted,
)
from healthfusion.workflows.evaluate import evaluate_predictions
from healthfusion.workflows.modeling import build_run_hybrid, pretrained_featurizer

log = logging.getLogger(__name__)
HYBRID, ENSEMBLE = "hybrid", "ensemble"
TRAINABLE_KINDS = ("binary", "multiclass", "regression")


def open_source(spec: SourceSpec, console=None) -> Cohort:
    """The cohort a :class:`SourceSpec` names: a saved folder, or built in memory from raw files."""
    if spec.cohort is not None:
        return Cohort.load(spec.cohort)
    builder = get_source(spec.source)
    if console is not None:
        with console.status(f"Reading {spec.source} from {spec.path} ..."):
            return builder(spec.path, **spec.options)
    return builder(spec.path, **spec.options)


def make_featurizer(spec: FeatureSpec, label: str | None) -> CohortFeaturizer:
    """A featurizer with the run's per-modality settings."""
    transformers = {
        "ts": TimeSeriesTransformer(hours=spec.hours, step=spec.step, min_count=spec.min_count),
        "image": ImageTransformer(size=spec.image_size),
        "codes": CodeTransformer(min_count=spec.code_min_count),
        "text": (TextTransformer(n_buckets=spec.text_buckets) if spec.text_model is None
                 else HFTokenTransformer(str(spec.text_model), max_length=spec.text_max_length)),
    }
    return CohortFeaturizer(modalities=spec.modalities, label=label, summary=spec.summary,
                            summary_stats=spec.summary_stats,
                            transformers={m: t for m, t in transformers.items() if m in spec.modalities})


def _fit_hybrid(feat, spec: ModelSpec, train, val, training: TrainerConfig, console=None, head: str = "binary",
                n_outputs: int = 1, init=None, privacy: PrivacyConfig | None = None):
    """Build and fit the run's hybrid; ``init(model)``, when given, sets initial weights after the seeded build.
    With ``privacy`` the fit is DP-SGD on a private copy (LSTM -> DPLSTM) whose weights are copied back; the
    :class:`DPSGD` plug-in (its ``report()``) is among ``trainer.plugins``."""
    model, training = build_run_hybrid(feat, spec, training, head=head, n_outputs=n_outputs)
    if init is not None:
        init(model)
    callbacks = [ProgressCallback(console=console)] if console is not None else []
    trained, plugins = model, []
    if privacy is not None:
        plugins.append(DPSGD(privacy, len(train), training.batch_size, training.max_epochs))
        trained = make_private_model(model)
    trainer = Trainer(training, callbacks=callbacks, plugins=plugins)
    history = trainer.fit(trained, train, val, head_kind=head)
    if trained is not model:
        copy_to_plain(trained, model)
    return model, trainer, history


def tune_hybrid(config: RunConfig, cohort: Cohort, train_ids: list[str], console=None) -> tuple[ModelSpec, pd.DataFrame]:
    """Grid search over ``config.tuning.grid`` by patient-level K-fold CV on the training stays only.

    Each fold refits the features on its own training part and splits that part again by patient (stratified, the
    run's val share of train + val) into an inner training set and an inner early-stopping set; the held-out fold
    is scored once, after training, and never chooses an epoch. The score is the mean held-out-fold AUROC.
    """
    tuning = config.tuning
    keys = list(tuning.grid)
    stays = cohort.stays.set_index("stay_id").loc[train_ids].reset_index()
    label = cohort.label(config.data.label)
    fractions = {f"fold{k}": 1.0 / tuning.folds for k in range(tuning.folds)}
    folds = split_patients(stays, fractions=fractions, seed=config.data.split.seed, stratify=label)
    split = config.data.split
    inner_val = split.val / (split.train + split.val)
    inner = {}
    for k in range(tuning.folds):  # the same inner split for every candidate
        fit_ids = folds.index[folds != f"fold{k}"].tolist()
        parts = split_patients(stays.set_index("stay_id").loc[fit_ids].reset_index(),
                               fractions={"train": 1.0 - inner_val, "val": inner_val}, seed=split.seed + 1 + k,
                               stratify=label)
        inner[k] = (fit_ids, parts.index[parts == "train"].tolist(), parts.index[parts == "val"].tolist(),
                    folds.index[folds == f"fold{k}"].tolist())
    rows = []
    for values in product(*(tuning.grid[k] for k in keys)):
        spec = config.model.model_copy(update=dict(zip(keys, values, strict=True)))
        scores = []
        for k in range(tuning.folds):
            fit_ids, inner_train, inner_stop, held_ids = inner[k]
            feat = pretrained_featurizer(make_featurizer(config.features, config.data.label).fit(cohort, fit_ids), spec)
            fit, stop, held = (feat.transform(cohort, ids) for ids in (inner_train, inner_stop, held_ids))
            fit, stop, held = fit[fit.usable_rows()], stop[stop.usable_rows()], held[held.usable_rows()]
            model, trainer, _ = _fit_hybrid(feat, spec, fit, stop, config.training)
            scores.append(auroc(held["target"], trainer.predict(model, held)))
        rows.append({**dict(zip(keys, values, strict=True)), "cv_auroc": float(np.mean(scores)),
                     "cv_auroc_sd": float(np.std(scores))})
        if console is not None:
            console.print(f"      tuning {rows[-1]}")
    table = pd.DataFrame(rows)
    best = table.loc[table["cv_auroc"].idxmax(), keys].to_dict()
    return config.model.model_copy(update=best), table


def _reference_scores(config: RunConfig, cohorts: dict[str, Cohort], ids: dict[str, list[str]]) -> dict:
    """Each reference score (e.g. SAPS-I) mapped to a probability by a logistic fit on the training stays."""
    out = {}
    for name in config.reference_scores:
        def score(split, name=name):
            return pd.to_numeric(cohorts[split].labels.set_index("stay_id")[name].reindex(ids[split])).to_numpy()

        x_train, y_train = score("train"), cohorts["train"].label(config.data.label).reindex(ids["train"]).to_numpy()
        ok = ~np.isnan(x_train) & ~np.isnan(y_train)
        calib = LogisticRegression().fit(x_train[ok, None], y_train[ok])
        out[name] = {}
        for split in ("val", "test"):
            x = score(split)
            p = np.full(len(x), np.nan)
            p[~np.isnan(x)] = calib.predict_proba(x[~np.isnan(x), None])[:, 1]
            out[name][split] = p
    return out


def featurize_run(config: RunConfig, spec: ModelSpec, main: Cohort, cohorts: dict, ids: dict, say):
    """The featurizer fitted on the training stays, each split's arrays and each split's usable rows.

    A stay with none of the model's modalities cannot be scored by the hybrid: it is left out of training and gets
    no hybrid score (evaluation counts it under models_without_score), never a default probability.
    """
    say("[bold cyan]Features[/] fitted on the training stays")
    feat = pretrained_featurizer(make_featurizer(config.features, config.data.label).fit(main, ids["train"]), spec)
    data = {s: feat.transform(cohorts[s], ids[s]) for s in ids}
    usable = {s: data[s].usable_rows() for s in ids}
    no_input = {s: int((~u).sum()) for s, u in usable.items() if (~u).any()}
    if no_input:
        say(f"      stays with none of the modalities {list(feat.transformers_)}: {no_input}")
    return feat, data, usable


def _ensemble_weights(config: RunConfig, spec: ModelSpec, cohort: Cohort, ids: dict, histories: dict, gbm,
                      val_p: dict, y_val: np.ndarray, say) -> EnsembleWeights:
    """The members' weights as ``config.ensemble.weights`` says (see :class:`EnsembleSpec`)."""
    ens = config.ensemble
    members = tuple(val_p)
    if len(members) == 1 or ens.weights == "uniform":
        return EnsembleWeights.uniform(members, ens.combine)
    if ens.weights == "validation":
        table = pd.DataFrame({"y_true": y_val, **val_p}).dropna()
        return fit_weights({m: table[m].to_numpy() for m in members}, table["y_true"].to_numpy(),
                           combine=ens.combine)
    epochs = int(np.median([h.best_epoch + 1 for h in histories.values()]))
    fixed = config.training.model_copy(update={"max_epochs": epochs})
    say(f"      cross-fitting the members over {ens.folds} folds of the training + validation stays "
        f"(hybrid {epochs} epochs, boosting {gbm.n_trees_} trees)")

    def fit_featurizer(fit_ids):
        return pretrained_featurizer(make_featurizer(config.features, config.data.label).fit(cohort, fit_ids), spec)

    def fit_network(feat, train):
        return _fit_hybrid(feat, spec, train, None, fixed)[0]

    y, oof = cross_fitted(cohort, ids["train"] + ids["val"], config.data.label, fit_featurizer=fit_featurizer,
                          fit_network=fit_network, boosting=gbm, stats=config.features.summary_stats,
                          folds=ens.folds, seed=config.data.split.seed + 100,
                          on_fold=lambda k: say(f"      fold {k + 1} of {ens.folds} done"))
    table = pd.DataFrame({"y_true": y, **oof}).dropna()
    return fit_weights({m: table[m].to_numpy() for m in members}, table["y_true"].to_numpy(), combine=ens.combine)


@dataclass
class RunData:
    """What every kind of run needs before fitting: the run folder, the cohorts and stay ids of each split (stays
    without the label already left out and counted) and the label's spec."""

    run_dir: Path
    main: Cohort
    cohorts: dict[str, Cohort]
    ids: dict[str, list[str]]
    label: LabelSpec
    started: float
    say: Callable[[str], None]


def _check_label_kind(config: RunConfig, spec_label: LabelSpec, main: Cohort) -> None:
    """Stop, naming the setting, when the label's kind cannot be trained by ``healthfusion train`` as configured."""
    kind, name = spec_label.kind, config.data.label
    if kind == "binary":
        return
    if kind not in TRAINABLE_KINDS:
        raise ValueError(
            f"`healthfusion train` predicts binary, multiclass and regression labels; label {name!r} is {kind}. "
            f"Train it with `healthfusion multitask` (binary, multiclass, multilabel, regression and clustering "
            f"tasks), or pick another label: "
            f"{[lab.name for lab in main.meta.labels if lab.kind in TRAINABLE_KINDS]}.")
    unsupported = {"ensemble": config.ensemble is not None, "reference_scores": bool(config.reference_scores),
                   "privacy": config.privacy is not None,
                   "tuning": config.tuning is not None and bool(config.tuning.grid)}
    for key, used in unsupported.items():
        if used:
            raise ValueError(f"The run config's {key!r} section works with binary labels only; label {name!r} is "
                             f"{kind}. Remove {key!r} from the config, or pick a binary label.")
    if kind == "regression" and config.training.imbalance != "none":
        raise ValueError(f"training.imbalance: {config.training.imbalance!r} needs class labels; label {name!r} is "
                         "a regression label. Use imbalance: none.")


def _strata(cohort: Cohort, spec_label: LabelSpec) -> pd.Series:
    """The label as split strata: the 0/1 label itself (binary), the class index (multiclass) or the quintile
    of the value (regression); missing labels stay missing (their own stratum)."""
    label = cohort.label(spec_label.name)
    if spec_label.kind == "binary":
        return label
    if spec_label.kind == "multiclass":
        codes = pd.Index(spec_label.classes).get_indexer(label.astype("string").astype(object))
        return pd.Series(np.where(codes >= 0, codes, np.nan), index=label.index)
    values = pd.to_numeric(label, errors="coerce")
    ranks = values.rank(method="first", pct=True)
    return np.ceil(ranks * 5).clip(1, 5)


def prepare_run(config: RunConfig, console=None) -> RunData:
    """Create the run folder, read the data, split the patients and count the input rows' fate.

    Writes ``config.yaml`` and ``accounting.csv``. Raises ValueError (SourceError, CohortError) on unreadable data,
    a label the cohort lacks, a label kind or setting ``healthfusion train`` cannot use, or an impossible split.
    """
    t0 = time.perf_counter()
    run_dir = Path(config.out) if config.out else Path("runs") / f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(json.loads(config.model_dump_json())))

    def say(text):
        if console is not None:
            console.print(text)

    say("[bold cyan]Data[/]")
    main = open_source(config.data, console)
    spec_label = main.meta.label(config.data.label)  # fails early, naming the labels the cohort has
    _check_label_kind(config, spec_label, main)
    split_cfg = config.data.split
    if config.data.test is not None:
        test_cohort = open_source(config.data.test, console)
        frac = {"train": split_cfg.train / (split_cfg.train + split_cfg.val),
                "val": split_cfg.val / (split_cfg.train + split_cfg.val)}
        split = split_patients(main.stays, frac, seed=split_cfg.seed, stratify=_strata(main, spec_label))
        ids = {"train": split.index[split == "train"].tolist(), "val": split.index[split == "val"].tolist(),
               "test": test_cohort.stay_ids.tolist()}
        cohorts = {"train": main, "val": main, "test": test_cohort}
    else:
        frac = {"train": split_cfg.train, "val": split_cfg.val, "test": split_cfg.test}
        split = split_patients(main.stays, frac, seed=split_cfg.seed, stratify=_strata(main, spec_label))
        ids = {s: split.index[split == s].tolist() for s in ("train", "val", "test")}
        cohorts = {"train": main, "val": main, "test": main}
    # stays without the label cannot be trained or scored against it; count them instead of dropping silently
    unlabeled = {}
    for s in ids:
        lab = cohorts[s].label(config.data.label).reindex(ids[s])
        unlabeled[s] = int(lab.isna().sum())
        ids[s] = lab.index[lab.notna()].tolist()
    say("      stays: " + ", ".join(f"{s} {len(v)}" for s, v in ids.items())
        + (f" (without label, excluded: {unlabeled})" if any(unlabeled.values()) else ""))
    sources = {"main (train, val" + (")" if config.data.test is not None else ", test)"): main}
    if config.data.test is not None:
        sources["external test"] = cohorts["test"]
    accounting = pd.concat([c.accounting.to_frame().assign(cohort=name) for name, c in sources.items()])
    accounting.to_csv(run_dir / "accounting.csv", index=False)
    return RunData(run_dir, main, cohorts, ids, spec_label, t0, say)


def run_training(config: RunConfig, console=None) -> Path:
    """Run the whole training job described by ``config`` and return the run folder.

    A binary label trains as this module describes; a multiclass or regression label trains the hybrid with that
    head and the matching baselines (:mod:`healthfusion.workflows.train_kinds`).

    Raises
    ------
    ValueError (SourceError, CohortError, ConfigError)
        On unreadable data, a label the cohort lacks (or of a kind train cannot use: multilabel), a setting that
        needs a binary label (ensemble, reference_scores, tuning), or an impossible split; the message says which.
    """
    prepared = prepare_run(config, console)
    if prepared.label.kind != "binary":
        from healthfusion.workflows.train_kinds import train_other_kind

        return train_other_kind(config, prepared, console)
    run_dir, main, cohorts, ids, t0, say = (prepared.run_dir, prepared.main, prepared.cohorts, prepared.ids,
                                            prepared.started, prepared.say)

    spec, tuning_table = config.model, None
    if config.tuning is not None and config.tuning.grid:
        say(f"[bold cyan]Tuning[/] {config.tuning.folds}-fold CV on the training stays")
        spec, tuning_table = tune_hybrid(config, main, ids["train"], console)
        tuning_table.to_csv(run_dir / "tuning.csv", index=False)
        say(f"      chosen: {spec.model_dump()}")

    feat, data, usable = featurize_run(config, spec, main, cohorts, ids, say)

    seeds = [config.training.seed + i for i in range(config.ensemble.seeds if config.ensemble else 1)]
    say("[bold cyan]Hybrid model[/]" + (f" {len(seeds)} networks, seeds {seeds}" if len(seeds) > 1 else ""))
    networks, histories = {}, {}
    for seed in seeds:
        model, trainer, histories[seed] = _fit_hybrid(
            feat, spec, data["train"][usable["train"]], data["val"][usable["val"]],
            config.training.model_copy(update={"seed": seed}), console, privacy=config.privacy)
        networks[seed] = model
    history = histories[seeds[0]]
    probs = {HYBRID: {}}
    for s in ("val", "test"):
        p = np.full(len(ids[s]), np.nan)
        if usable[s].any():
            p[usable[s]] = bag_probability(list(networks.values()), data[s][usable[s]], trainer)
        probs[HYBRID][s] = p
    (run_dir / "history.json").write_text(json.dumps({
        "train_loss": list(map(float, history.train_loss)), "val_metric": list(map(float, history.val_metric)),
        "best_epoch": history.best_epoch, "epoch_seconds": list(map(float, history.epoch_seconds)),
        "best_epoch_by_seed": {str(k): h.best_epoch for k, h in histories.items()}}, indent=2))

    members = config.ensemble.members if config.ensemble else [HYBRID]
    fitted, scored = {}, {}
    if config.baselines or BOOSTING in members:
        stats = config.features.summary_stats
        x = {s: engineered_features(cohorts[s], feat, ids[s], stats=stats) for s in ids}
        names = list(dict.fromkeys([*config.baselines, *([BOOSTING] if BOOSTING in members else [])]))
        say("[bold cyan]Baselines[/] on engineered features of the same split: " + ", ".join(names))
        for name in names:
            est = make_baseline(name, seed=config.training.seed)
            est.set_params(**{f"model__{k}": v for k, v in config.baseline_params.get(name, {}).items()})
            fitted[name] = est.fit(x["train"], data["train"]["target"])
            scored[name] = {s: est.predict_proba(x[s])[:, 1] for s in ("val", "test")}
            if name in config.baselines:
                probs[name] = scored[name]
    ensemble_info = None
    if config.ensemble is None:
        model.save_pretrained(run_dir / "model", preprocessing_state=feat.get_state())
    else:
        gbm = fitted[BOOSTING].named_steps["model"] if BOOSTING in members else None
        member_p = {s: {HYBRID: probs[HYBRID][s], **({BOOSTING: scored[BOOSTING][s]} if gbm is not None else {})}
                    for s in ("val", "test")}
        weights = _ensemble_weights(config, spec, main, ids, histories, gbm, member_p["val"],
                                    data["val"]["target"], say)
        ensemble = RunEnsemble(feat, networks, weights, gbm, tuple(config.features.summary_stats))
        ensemble.save(run_dir / "model")
        ensemble_info = {"members": list(weights.members), "weights": list(weights.weights), "seeds": seeds,
                         "weights_from": config.ensemble.weights, "fit_info": weights.fit_info}
        say("      ensemble weights: " + ", ".join(f"{m} {w:.2f}" for m, w in zip(weights.members, weights.weights,
                                                                                 strict=True)))
        if len(members) > 1:
            probs[ENSEMBLE] = {s: combine_members(member_p[s], weights) for s in ("val", "test")}
    for name, p in _reference_scores(config, cohorts, ids).items():
        probs[f"{name} (reference score)"] = p

    rows = []
    for s in ("val", "test"):
        frame = pd.DataFrame({"stay_id": ids[s], "split": s, "y_true": data[s]["target"]})
        for name, p in probs.items():
            frame[name] = p[s]
        rows.append(frame)
    predictions = pd.concat(rows, ignore_index=True)
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    domain_table({s: cohorts[s].stays for s in ("val", "test")},
                 {s: ids[s] for s in ("val", "test")}).to_csv(run_dir / "domains.csv", index=False)

    say("[bold cyan]Evaluation[/] on the test stays")
    ev = config.evaluation
    val = predictions[predictions["split"] == "val"]
    op = {}
    for name in probs:
        scored = val[val[name].notna()]
        if scored["y_true"].nunique() == 2:
            op[name] = choose_threshold(scored["y_true"].to_numpy(), scored[name].to_numpy(),
                                        rule=ev.operating_point, target=ev.target_sensitivity)
    summary = evaluate_predictions(run_dir, threshold=ev.threshold, operating_points=op, n_boot=ev.n_boot,
                                   seed=config.training.seed)
    summary["seconds"] = time.perf_counter() - t0
    summary["best_epoch"] = history.best_epoch
    summary["model_spec"] = spec.model_dump()
    dp = next((c for c in trainer.plugins if isinstance(c, DPSGD)), None)
    if dp is not None:
        summary["privacy"] = {**dp.report(), "trained": "hybrid (DP-SGD); the baselines are not private"}
        say(f"      differential privacy: epsilon {summary['privacy']['epsilon']:.2f} at delta {dp.delta:.1e}")
    if ensemble_info is not None:
        summary["ensemble"] = ensemble_info
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))

    if not ev.audit:
        say("[bold cyan]Audit[/] skipped (evaluation.audit: false); `healthfusion report --recompute-audit "
            "--explain` adds it later")
        return run_dir
    say("[bold cyan]Audit[/] explanations, calibration, subgroups, impact")
    test_rows = np.flatnonzero(usable["test"])
    write_explanations(run_dir, networks[seeds[0]], feat, data["train"][usable["train"]], data["test"][test_rows],
                       [ids["test"][i] for i in test_rows], seed=config.training.seed)
    write_audit(run_dir, model=ENSEMBLE if ENSEMBLE in probs else HYBRID, n_boot=min(ev.n_boot, 500),
                seed=config.training.seed)
    return run_dir
