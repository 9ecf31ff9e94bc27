"""``healthfusion train``: fit the hybrid model and the classical baselines on one split, evaluate them together.

A run folder (new or empty: see :mod:`healthfusion.workflows.runfolder`) holds ``config.yaml`` (the validated
config, paths relative to the run folder), ``model/`` (the hybrid, loadable without the data),
``predictions.csv`` (one row per evaluated stay: split, label, each model's probability), ``metrics.json`` and
``comparison.csv`` (every model with bootstrap 95% CIs, at threshold 0.5 and at an operating point chosen on the
validation stays), ``roc.png``/``pr.png``, ``history.json``, ``accounting.csv`` (the input rows' fate), ``domains.csv`` (each
evaluated stay's site, care unit, age group, sex, ethnicity), ``explanations/`` and ``audit/`` (see
:mod:`healthfusion.workflows.audit`) and ``artefacts.json`` (which model each artefact belongs to). That is a run
of a binary label; multiclass and regression labels train through :mod:`healthfusion.workflows.train_kinds` after
the same data preparation (:func:`prepare_run`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from healthfusion.data.cohort import Cohort
from healthfusion.data.splits import split_patients
from healthfusion.evaluation.metrics import auroc, choose_threshold
from healthfusion.features.compose import engineered_features
from healthfusion.files import write_csv, write_text
from healthfusion.models.calibration import CALIBRATION_METHODS, Calibrator, choose_calibrator
from healthfusion.models.classical import make_baseline
from healthfusion.models.ensemble import EnsembleWeights, fit_weights
from healthfusion.models.folder import write_card
from healthfusion.models.inference import network_outputs
from healthfusion.models.run_ensemble import (
    BOOSTING,
    RunEnsemble,
    bag_probability,
    combine_members,
    network_folder,
)
from healthfusion.training.privacy import DPSGD
from healthfusion.workflows.audit import domain_table, write_audit, write_explanations
from healthfusion.workflows.common import (
    RunData,
    evaluated_split,
    featurize_run,
    fit_hybrid,
    make_featurizer,
    model_card,
    prepare_run,
    run_baselines,
    scored_splits,
)
from healthfusion.workflows.config import ModelSpec, RunConfig, TrainerConfig, tuned_section
from healthfusion.workflows.ensemble import cross_fitted
from healthfusion.workflows.evaluate import challenge_scores, evaluate_predictions, evaluate_test_sets
from healthfusion.workflows.model_card import data_facts
from healthfusion.workflows.modeling import pretrained_featurizer
from healthfusion.workflows.runfolder import record_artefacts
from healthfusion.workflows.train_kinds import train_other_kind

log = logging.getLogger(__name__)
HYBRID, ENSEMBLE = "hybrid", "ensemble"


def tune_hybrid(config: RunConfig, cohort: Cohort, train_ids: list[str], console=None,
                cluster=None) -> tuple[RunConfig, pd.DataFrame]:
    """Search ``config.tuning``'s space (:func:`healthfusion.workflows.search.run_search`, Optuna) by
    patient-level K-fold CV on the training stays only; return ``config`` with the chosen ``model`` and
    ``training`` values, and the trial table.

    Each fold refits the features on its own training part and splits that part again by patient (stratified, the
    run's val share of train + val) into an inner training set and an inner early-stopping set; the held-out fold
    is scored once, after training, and never chooses an epoch. The folds and inner splits are the same for every
    trial. A trial's score is the mean held-out-fold AUROC; the running mean is reported after each fold (pruning).
    With ``cluster`` (a started :class:`~healthfusion.scale.ray.RayCluster`) ``cluster.n`` trials run at a time,
    one per worker, unpruned (see :mod:`healthfusion.workflows.search`).

    Raises
    ------
    ValueError
        Trial values that make an invalid ``model`` section (the message names them), or a stored study that
        does not match the config (:class:`~healthfusion.workflows.search.SearchError`).
    """
    from healthfusion.workflows.search import run_search

    tuning = config.tuning
    stays = cohort.stays.set_index("stay_id").loc[train_ids].reset_index()
    label = cohort.label(config.data.label)
    fractions = {f"fold{k}": 1.0 / tuning.folds for k in range(tuning.folds)}
    folds = split_patients(stays, fractions=fractions, seed=config.data.split.seed, stratify=label)
    split = config.data.split
    inner_val = split.val / (split.train + split.val)
    inner = {}
    for k in range(tuning.folds):  # the same inner split for every trial
        fit_ids = folds.index[folds != f"fold{k}"].tolist()
        parts = split_patients(stays.set_index("stay_id").loc[fit_ids].reset_index(),
                               fractions={"train": 1.0 - inner_val, "val": inner_val}, seed=split.seed + 1 + k,
                               stratify=label)
        inner[k] = (fit_ids, parts.index[parts == "train"].tolist(), parts.index[parts == "val"].tolist(),
                    folds.index[folds == f"fold{k}"].tolist())

    def tuned(values: dict) -> RunConfig:
        sections = {name: {k: v for k, v in values.items() if tuned_section(k) == name} for name in ("model", "training")}
        try:
            return config.model_copy(update={
                "model": ModelSpec.model_validate({**config.model.model_dump(), **sections["model"]}),
                "training": TrainerConfig.model_validate({**config.training.model_dump(), **sections["training"]})})
        except ValueError as err:
            raise ValueError(f"tuning trial values {values} make an invalid `model` or `training` section: {err}. "
                             f"Narrow tuning.space.") from err

    def cross_validate(values: dict, report) -> list[float]:
        trial, scores = tuned(values), []
        spec = trial.model
        for k in range(tuning.folds):
            fit_ids, inner_train, inner_stop, held_ids = inner[k]
            feat = pretrained_featurizer(make_featurizer(config.features, config.data.label).fit(cohort, fit_ids), spec)
            fit, stop, held = (feat.transform(cohort, ids) for ids in (inner_train, inner_stop, held_ids))
            fit, stop, held = fit[fit.usable_rows()], stop[stop.usable_rows()], held[held.usable_rows()]
            model, trainer, _ = fit_hybrid(feat, spec, fit, stop, trial.training)
            scores.append(auroc(held["target"], trainer.predict(model, held)))
            if k + 1 < tuning.folds and report(k, float(np.mean(scores))):
                break
        return scores

    best, table = run_search(tuning, cross_validate, seed=config.training.seed, study_name=config.name,
                             console=console, parallel=cluster)
    return tuned(best), table


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
        for split in scored_splits(ids):
            x = score(split)
            p = np.full(len(x), np.nan)
            p[~np.isnan(x)] = calib.predict_proba(x[~np.isnan(x), None])[:, 1]
            out[name][split] = p
    return out


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
                           combine=ens.combine, method=ens.fit)
    epochs = int(np.median([h.best_epoch + 1 for h in histories.values()]))
    fixed = config.training.model_copy(update={"max_epochs": epochs})
    say(f"      cross-fitting the members over {ens.folds} folds of the training + validation stays "
        f"(hybrid {epochs} epochs, boosting {gbm.n_trees_} trees)")

    def fit_featurizer(fit_ids):
        return pretrained_featurizer(make_featurizer(config.features, config.data.label).fit(cohort, fit_ids), spec)

    def fit_network(feat, train):
        return fit_hybrid(feat, spec, train, None, fixed)[0]

    y, oof = cross_fitted(cohort, ids["train"] + ids["val"], config.data.label, fit_featurizer=fit_featurizer,
                          fit_network=fit_network, boosting=gbm, stats=config.features.summary_stats,
                          folds=ens.folds, seed=config.data.split.seed + 100,
                          on_fold=lambda k: say(f"      fold {k + 1} of {ens.folds} done"))
    table = pd.DataFrame({"y_true": y, **oof}).dropna()
    return fit_weights({m: table[m].to_numpy() for m in members}, table["y_true"].to_numpy(), combine=ens.combine,
                       method=ens.fit)


def fit_calibrator(config: RunConfig, y_val: np.ndarray, p_val: np.ndarray, say, what: str) -> Calibrator:
    """The calibrator ``config.evaluation.calibration`` asks for, fitted on the scored, labelled validation stays
    (``none`` when they hold a single outcome: there is nothing to fit, and the run says so)."""
    method = config.evaluation.calibration
    ok = ~np.isnan(p_val) & ~np.isnan(y_val)
    y, p = y_val[ok], p_val[ok]
    if y.size == 0 or y.min() == y.max():
        say(f"      calibration of {what}: none (the validation stays hold a single outcome)")
        return Calibrator("none").fit([0, 1], [0.0, 1.0])
    if method == "auto":
        cal = choose_calibrator(y, p, CALIBRATION_METHODS, seed=config.training.seed)
    else:
        cal = Calibrator(method).fit(y, p)
    say(f"      calibration of {what}: {cal.method} (fitted on {y.size} validation stays)")
    return cal


def write_model_cards(model_dir: Path, config: RunConfig, prepared: RunData, feat, calibrators: dict,
                      operating_point: dict | None, ensemble: bool, seeds: list[int]) -> None:
    """``model.json`` of the run's model folder and, for an ensemble, of each member folder first (a member scores on
    its own with its own calibrator). ``calibrators`` maps member folder names (``""``: the model) to calibrators."""
    if not ensemble:
        write_card(model_dir, model_card("hybrid", config, prepared, feat, calibrators[""], operating_point))
        return
    stats = {"stats": list(config.features.summary_stats)}
    for seed in seeds:
        write_card(model_dir / network_folder(seed),
                   model_card("hybrid", config, prepared, feat, calibrators[network_folder(seed)]))
    if BOOSTING in calibrators:
        write_card(model_dir / BOOSTING, model_card("gradient_boosting", config, prepared, feat,
                                                    calibrators[BOOSTING], scoring=stats))
    write_card(model_dir, model_card("ensemble", config, prepared, feat, calibrators[""], operating_point,
                                     scoring={**stats, "seeds": seeds}))


def run_training(config: RunConfig, console=None, overwrite: bool = False, cluster: str | None = None) -> Path:
    """Run the whole training job described by ``config`` and return the run folder.

    A binary label trains as this module describes; a multiclass or regression label trains the hybrid with that
    head and the matching baselines (:mod:`healthfusion.workflows.train_kinds`). The run folder must be new or
    empty unless ``overwrite`` (see :func:`prepare_run`). With a ``tracking`` section the finished run folder
    is recorded in MLflow (:func:`healthfusion.tracking.track_run`).

    With ``cluster`` (a ``--cluster`` value, see :mod:`healthfusion.scale.cluster`) the run's hybrid network(s)
    train data-parallel on the cluster's workers with Ray Train, and a ``tuning`` search runs one trial per worker
    at a time; featurisation, baselines and ensemble cross-fitting run in this process.

    Raises
    ------
    ValueError (SourceError, CohortError, ConfigError, TrackingError)
        On unreadable data, a label the cohort lacks (or of a kind train cannot use: multilabel), a setting that
        needs a binary label (ensemble, reference_scores, tuning), or an impossible split; the message says which.
    """
    if cluster is None:
        run_dir = _train(config, console, overwrite)
    else:
        from healthfusion.scale.ray import RayCluster

        with RayCluster(cluster) as ray_cluster:
            if console is not None:
                console.print(f"Ray cluster {cluster}: the hybrid trains on {ray_cluster.n} workers")
            run_dir = _train(config, console, overwrite, ray_cluster)
    if config.tracking is not None:
        from healthfusion.tracking import track_run

        t = config.tracking
        run_id = track_run(run_dir, uri=t.uri, experiment=t.experiment, log_model=t.log_model)
        if console is not None:
            console.print(f"MLflow run {run_id}")
    return run_dir


def _train(config: RunConfig, console=None, overwrite: bool = False, cluster=None) -> Path:
    prepared = prepare_run(config, console, overwrite)
    if prepared.label.kind != "binary":
        return train_other_kind(config, prepared, console, cluster=cluster)
    run_dir, main, cohorts, ids, t0, say = (prepared.run_dir, prepared.main, prepared.cohorts, prepared.ids,
                                            prepared.started, prepared.say)

    spec, tuning_table = config.model, None
    if config.tuning is not None:
        say(f"[bold cyan]Tuning[/] {config.tuning.resolved_sampler} search, {config.tuning.folds}-fold CV on the "
            f"training stays")
        config, tuning_table = tune_hybrid(config, main, ids["train"], console, cluster=cluster)
        spec = config.model
        write_csv(tuning_table, run_dir / "tuning.csv", index=False)
        say(f"      chosen: {tuning_table.loc[tuning_table['chosen']].iloc[0].to_dict()}")

    feat, data, usable = featurize_run(config, spec, main, cohorts, ids, say)

    seeds = [config.training.seed + i for i in range(config.ensemble.seeds if config.ensemble else 1)]
    say("[bold cyan]Hybrid model[/]" + (f" {len(seeds)} networks, seeds {seeds}" if len(seeds) > 1 else ""))
    networks, histories = {}, {}
    for seed in seeds:
        model, trainer, histories[seed] = fit_hybrid(
            feat, spec, data["train"][usable["train"]], data["val"][usable["val"]],
            config.training.model_copy(update={"seed": seed}), console, privacy=config.privacy, cluster=cluster)
        networks[seed] = model
    history = histories[seeds[0]]
    probs = {HYBRID: {}}
    for s in scored_splits(ids):
        p = np.full(len(ids[s]), np.nan)
        if usable[s].any():
            p[usable[s]] = bag_probability(list(networks.values()), data[s][usable[s]])
        probs[HYBRID][s] = p
    write_text(run_dir / "history.json", json.dumps({
        "train_loss": list(map(float, history.train_loss)), "val_metric": list(map(float, history.val_metric)),
        "best_epoch": history.best_epoch, "epoch_seconds": list(map(float, history.epoch_seconds)),
        "best_epoch_by_seed": {str(k): h.best_epoch for k, h in histories.items()}}, indent=2))

    members = config.ensemble.members if config.ensemble else [HYBRID]
    fitted, scored = {}, {}
    baselines = run_baselines(config, say)
    if baselines or BOOSTING in members:
        stats = config.features.summary_stats
        x = {s: engineered_features(cohorts[s], feat, ids[s], stats=stats) for s in ids}
        names = list(dict.fromkeys([*baselines, *([BOOSTING] if BOOSTING in members else [])]))
        say("[bold cyan]Baselines[/] on engineered features of the same split: " + ", ".join(names))
        for name in names:
            est = make_baseline(name, seed=config.training.seed)
            est.set_params(**{f"model__{k}": v for k, v in config.baseline_params.get(name, {}).items()})
            fitted[name] = est.fit(x["train"], data["train"]["target"])
            scored[name] = {s: est.predict_proba(x[s])[:, 1] for s in scored_splits(ids)}
            if name in baselines:
                probs[name] = scored[name]
    ensemble_info = None
    y_val = data["val"]["target"]
    model_dir = run_dir / "model"
    if config.ensemble is None:
        model.save_pretrained(model_dir, preprocessing_state=feat.get_state())
        calibrators = {"": fit_calibrator(config, y_val, probs[HYBRID]["val"], say, "hybrid")}
        probs[HYBRID] = {s: calibrators[""].transform(p) for s, p in probs[HYBRID].items()}
        column_calibrators = {HYBRID: calibrators[""]}
    else:
        gbm = fitted[BOOSTING].named_steps["model"] if BOOSTING in members else None
        member_p = {s: {HYBRID: probs[HYBRID][s], **({BOOSTING: scored[BOOSTING][s]} if gbm is not None else {})}
                    for s in scored_splits(ids)}
        weights = _ensemble_weights(config, spec, main, ids, histories, gbm, member_p["val"], y_val, say)
        ensemble = RunEnsemble(feat, networks, weights, gbm, tuple(config.features.summary_stats))
        ensemble.save(model_dir)
        ensemble_info = {"members": list(weights.members), "weights": list(weights.weights), "seeds": seeds,
                         "weights_from": config.ensemble.weights, "fit_info": weights.fit_info}
        say("      ensemble weights: " + ", ".join(f"{m} {w:.2f}" for m, w in zip(weights.members, weights.weights,
                                                                                 strict=True)))
        val_rows = data["val"][usable["val"]]
        calibrators = {network_folder(seed): fit_calibrator(config, y_val[usable["val"]],
                                                            network_outputs(net, val_rows, "binary"), say,
                                                            f"network seed {seed}")
                       for seed, net in networks.items()}
        if gbm is not None:
            calibrators[BOOSTING] = fit_calibrator(config, y_val, scored[BOOSTING]["val"], say, BOOSTING)
        ens_val = {s: combine_members(member_p[s], weights) for s in scored_splits(ids)}
        calibrators[""] = fit_calibrator(config, y_val, ens_val["val"], say, "ensemble")
        calibrated = {s: calibrators[""].transform(p) for s, p in ens_val.items()}
        if len(members) > 1:
            probs[ENSEMBLE] = calibrated
            bag = fit_calibrator(config, y_val, probs[HYBRID]["val"], say, "the hybrid networks")
            probs[HYBRID] = {s: bag.transform(p) for s, p in probs[HYBRID].items()}
            column_calibrators = {HYBRID: bag, ENSEMBLE: calibrators[""]}
        else:  # a bag of hybrid networks is the run's hybrid
            probs[HYBRID] = calibrated
            column_calibrators = {HYBRID: calibrators[""]}
    for name, p in _reference_scores(config, cohorts, ids).items():
        probs[f"{name} (reference score)"] = p

    rows = []
    for s in scored_splits(ids):
        frame = pd.DataFrame({"stay_id": ids[s], "split": s, "y_true": data[s]["target"]})
        for name, p in probs.items():
            frame[name] = p[s]
        rows.append(frame)
    predictions = pd.concat(rows, ignore_index=True)
    write_csv(predictions, run_dir / "predictions.csv", index=False)
    write_csv(domain_table({s: cohorts[s].stays for s in scored_splits(ids)}, {s: ids[s] for s in scored_splits(ids)}),
              run_dir / "domains.csv", index=False)

    on = evaluated_split(ids)
    say("[bold cyan]Evaluation[/] on the " + ("test stays" if on == "test" else
                                               "validation stays (no test set: these stays also fitted the calibrator)"))
    ev = config.evaluation
    val = predictions[predictions["split"] == "val"]
    op = {}
    for name in probs:
        scored = val[val[name].notna()]
        if scored["y_true"].nunique() == 2:
            op[name] = choose_threshold(scored["y_true"].to_numpy(), scored[name].to_numpy(),
                                        rule=ev.operating_point, target=ev.target_sensitivity)
    saved = ENSEMBLE if ENSEMBLE in probs else HYBRID
    point = {"rule": ev.operating_point, "threshold": float(op[saved]), "chosen_on": "validation stays"} \
        if saved in op else None
    write_model_cards(model_dir, config, prepared, feat, calibrators, point,
                      ensemble=config.ensemble is not None, seeds=seeds)
    summary = evaluate_predictions(run_dir, split=on, threshold=ev.threshold, operating_points=op, n_boot=ev.n_boot,
                                   seed=config.training.seed)
    summary["test_set"] = on == "test"
    if prepared.test_sets:
        by_set = evaluate_test_sets(run_dir, prepared.test_sets, threshold=ev.threshold, n_boot=ev.n_boot,
                                    seed=config.training.seed)
        summary["test_sets"] = {name: json.loads(by_set.loc[name].to_json(orient="index"))
                                for name in prepared.test_sets}
    if op:
        challenge = challenge_scores(run_dir, on, op, n_boot=ev.n_boot, seed=config.training.seed)
        summary["challenge2012"] = json.loads(challenge.to_json(orient="index"))
    summary["seconds"] = time.perf_counter() - t0
    summary["best_epoch"] = history.best_epoch
    summary["model_spec"] = spec.model_dump()
    summary["data"] = data_facts(main, cohorts, ids, config.data.label)
    # how each calibrated column of predictions.csv was mapped (the model's own is also in model/model.json)
    summary["calibrators"] = {name: cal.to_dict() for name, cal in column_calibrators.items()}
    dp = next((c for c in trainer.plugins if isinstance(c, DPSGD)), None)
    if dp is not None:
        summary["privacy"] = {**dp.report(), "trained": "hybrid (DP-SGD); the baselines are not private"}
        say(f"      differential privacy: epsilon {summary['privacy']['epsilon']:.2f} at delta {dp.delta:.1e}")
    if ensemble_info is not None:
        summary["ensemble"] = ensemble_info
    write_text(run_dir / "metrics.json", json.dumps(summary, indent=2, default=str))

    if on != "test":
        record_artefacts(run_dir)
        say("[bold cyan]Audit[/] skipped: the run has no test set (`healthfusion predict` scores external data)")
        return run_dir
    if not ev.audit:
        record_artefacts(run_dir)
        say("[bold cyan]Audit[/] skipped (evaluation.audit: false); `healthfusion report --recompute-audit "
            "--explain` adds it later")
        return run_dir
    say("[bold cyan]Audit[/] explanations, calibration, subgroups, impact")
    test_rows = np.flatnonzero(usable["test"])
    write_explanations(run_dir, networks[seeds[0]], feat, data["train"][usable["train"]], data["test"][test_rows],
                       [ids["test"][i] for i in test_rows], seed=config.training.seed)
    write_audit(run_dir, model=ENSEMBLE if ENSEMBLE in probs else HYBRID, n_boot=min(ev.n_boot, 500),
                seed=config.training.seed)
    record_artefacts(run_dir)
    return run_dir
