"""``healthfusion train`` with a multiclass or regression label.

The data, split and row accounting are those of a binary run (:func:`healthfusion.workflows.common.prepare_run`;
the split is stratified by class, or by quintile of the value). Then:

* the hybrid gets a softmax head over the label's classes (cross-entropy) or one linear output (mean squared
  error; its bias starts at the training mean), early-stopped on validation accuracy or negative MSE;
* baselines on the engineered features of the same split: multiclass ``logistic_regression`` and
  ``random_forest`` (as for a binary label, multinomial); regression ``logistic_regression`` becomes
  ``ridge_regression`` and ``random_forest`` a random-forest regressor. Other baselines are skipped with a note;
* ``predictions.csv`` (val and test stays): ``y_true`` (the class name, or the value) and, per model, the
  predicted class in the ``<model>`` column plus ``<model>:p_<class>`` probability columns (multiclass), or the
  predicted value in ``<model>`` (regression). A stay with none of the hybrid's modalities gets empty cells;
* ``metrics.json`` / ``comparison.csv`` with bootstrap 95% CIs
  (:func:`healthfusion.workflows.evaluate.evaluate_kind_predictions`): multiclass accuracy, macro-F1, macro
  one-vs-rest AUROC; regression MAE, RMSE, R²;
* ``history.json``, ``domains.csv`` and ``model/`` (the hybrid with its preprocessing and ``model.json``;
  :func:`healthfusion.models.scoring.load_model` and ``healthfusion predict`` score with it).

The binary-only steps (thresholds and operating points, calibration/fairness audit, explanations, ensembles,
reference scores, tuning) are not run: the audit and explanations are skipped with a printed note, the others
stop the run with a message naming the setting before anything is fitted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from healthfusion.features.compose import engineered_features
from healthfusion.files import write_csv, write_text
from healthfusion.models.classical import make_baseline, make_regression_baseline
from healthfusion.models.folder import write_card
from healthfusion.workflows.audit import domain_table
from healthfusion.workflows.common import (
    RunData,
    evaluated_split,
    featurize_run,
    fit_hybrid,
    model_card,
    run_baselines,
    scored_splits,
)
from healthfusion.workflows.config import RunConfig
from healthfusion.workflows.evaluate import PROBA_SEP, evaluate_kind_predictions
from healthfusion.workflows.runfolder import record_artefacts

HYBRID = "hybrid"

#: baselines per label kind: run-config name -> (column name, builder)
KIND_BASELINES = {
    "multiclass": {"logistic_regression": "logistic_regression", "random_forest": "random_forest"},
    "regression": {"logistic_regression": "ridge_regression", "random_forest": "random_forest"},
}


def _baseline(kind: str, name: str, seed: int):
    if kind == "multiclass":
        return make_baseline(name, seed=seed)
    return make_regression_baseline(KIND_BASELINES[kind][name], seed=seed)


def _full_proba(est, x: pd.DataFrame, n_classes: int) -> np.ndarray:
    """``[n, K]`` class probabilities of a fitted classifier, zero for classes absent from its training stays."""
    out = np.zeros((len(x), n_classes))
    out[:, np.asarray(est.classes_, dtype=np.int64)] = est.predict_proba(x)
    return out


def _columns(kind: str, name: str, pred: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    """The ``predictions.csv`` columns of one model (see the module docs); NaN rows give empty cells."""
    if kind == "regression":
        return {name: pred}
    missing = np.isnan(pred).any(axis=1)
    chosen = np.asarray(classes, dtype=object)[np.nan_to_num(pred, nan=0.0).argmax(axis=1)]
    chosen[missing] = None
    return {name: chosen, **{f"{name}{PROBA_SEP}{c}": pred[:, k] for k, c in enumerate(classes)}}


def _set_regression_bias(mean: float):
    def init(model):
        with torch.no_grad():
            model.head.linear.bias.fill_(mean)
    return init


def train_other_kind(config: RunConfig, prepared: RunData, console=None, cluster=None) -> Path:
    """Fit, predict and evaluate a run of a multiclass or regression label (see the module docs); return the run
    folder. ``prepared`` comes from :func:`healthfusion.workflows.common.prepare_run`; with ``cluster`` (a started
    :class:`~healthfusion.scale.ray.RayCluster`) the hybrid trains data-parallel on it.

    Raises
    ------
    ValueError
        A label kind other than multiclass/regression, or a baseline_params entry the baseline does not take.
    """
    run_dir, main, cohorts, ids, say = prepared.run_dir, prepared.main, prepared.cohorts, prepared.ids, prepared.say
    spec_label = prepared.label
    kind = spec_label.kind
    if kind not in KIND_BASELINES:
        raise ValueError(f"train_other_kind trains multiclass and regression labels; {spec_label.name!r} is {kind}.")
    classes = list(spec_label.classes or [])
    spec = config.model

    feat, data, usable = featurize_run(config, spec, main, cohorts, ids, say)

    say(f"[bold cyan]Hybrid model[/] {kind} head" + (f" over {len(classes)} classes" if classes else ""))
    train = data["train"][usable["train"]]
    init = _set_regression_bias(float(np.mean(train["target"]))) if kind == "regression" else None
    model, trainer, history = fit_hybrid(feat, spec, train, data["val"][usable["val"]], config.training, console,
                                          head=kind, n_outputs=len(classes) if kind == "multiclass" else 1, init=init,
                                          cluster=cluster)
    preds = {HYBRID: {}}
    for s in scored_splits(ids):
        p = np.full((len(ids[s]), len(classes)) if kind == "multiclass" else len(ids[s]), np.nan)
        if usable[s].any():
            p[usable[s]] = trainer.predict(model, data[s][usable[s]], head_kind=kind)
        preds[HYBRID][s] = p
    write_text(run_dir / "history.json", json.dumps({
        "train_loss": list(map(float, history.train_loss)), "val_metric": list(map(float, history.val_metric)),
        "best_epoch": history.best_epoch, "epoch_seconds": list(map(float, history.epoch_seconds))}, indent=2))
    model.save_pretrained(run_dir / "model", preprocessing_state=feat.get_state())
    write_card(run_dir / "model", model_card("hybrid", config, prepared, feat))  # no calibrator: not a risk

    baselines = run_baselines(config, say)
    available = [b for b in baselines if b in KIND_BASELINES[kind]]
    for name in baselines:
        if name not in available:
            say(f"      baseline {name} skipped: not available for a {kind} label (available: "
                f"{list(KIND_BASELINES[kind])})")
    if available:
        stats = config.features.summary_stats
        x = {s: engineered_features(cohorts[s], feat, ids[s], stats=stats) for s in ids}
        say("[bold cyan]Baselines[/] on engineered features of the same split: "
            + ", ".join(KIND_BASELINES[kind][b] for b in available))
        for name in available:
            est = _baseline(kind, name, config.training.seed)
            params = config.baseline_params.get(name, {})
            try:
                est.set_params(**{f"model__{k}": v for k, v in params.items()})
            except ValueError as err:
                raise ValueError(f"baseline_params.{name}: {err} ({KIND_BASELINES[kind][name]} is used for a {kind} "
                                 "label)") from err
            est.fit(x["train"], data["train"]["target"])
            preds[KIND_BASELINES[kind][name]] = {
                s: (_full_proba(est, x[s], len(classes)) if kind == "multiclass" else est.predict(x[s]))
                for s in scored_splits(ids)}

    rows = []
    for s in scored_splits(ids):
        y = data[s]["target"]
        frame = pd.DataFrame({"stay_id": ids[s], "split": s,
                              "y_true": np.asarray(classes, dtype=object)[y] if kind == "multiclass" else y})
        for name, p in preds.items():
            frame = frame.assign(**_columns(kind, name, p[s], classes))
        rows.append(frame)
    write_csv(pd.concat(rows, ignore_index=True), run_dir / "predictions.csv", index=False)
    write_csv(domain_table({s: cohorts[s].stays for s in scored_splits(ids)}, {s: ids[s] for s in scored_splits(ids)}),
              run_dir / "domains.csv", index=False)

    on = evaluated_split(ids)
    say(f"[bold cyan]Evaluation[/] on the {'test' if on == 'test' else 'validation (no test set)'} stays")
    summary = evaluate_kind_predictions(run_dir, spec_label.to_dict(), split=on, n_boot=config.evaluation.n_boot,
                                        seed=config.training.seed)
    summary["test_set"] = on == "test"
    summary["seconds"] = time.perf_counter() - prepared.started
    summary["best_epoch"] = history.best_epoch
    summary["model_spec"] = spec.model_dump()
    write_text(run_dir / "metrics.json", json.dumps(summary, indent=2, default=str))
    say(f"[bold cyan]Audit[/] skipped: calibration, subgroups, impact and explanations are computed for binary "
        f"labels only ({spec_label.name!r} is {kind})")
    record_artefacts(run_dir)
    return run_dir
