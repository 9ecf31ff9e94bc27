"""PhysioNet 2012 in-hospital mortality: the hybrid vs classical baselines and SAPS-I (run on demand, not a test).

Default (A -> B): every model is fitted on set A only, with a stratified validation split of A (15%) for early
stopping, and scored on set B, which drives no choice. ``--cv`` instead runs
patient-level, stratified 5-fold cross-validation on A + B (seeded), with the same inner validation split inside each
training part, and reports the mean +- sd over folds.

Models (all on the same stays):

* hybrid       bidirectional LSTM over the 48 h grid in 2-hour steps (values + mask + time since last observation,
               attention pooling) fused with an MLP over the static features plus the piecewise-linear-encoded per-variable
               summaries, the same statistics as boosting's (``CohortFeaturizer(summary=True)``, a wide & deep
               design); the logits of ``--seeds`` independently seeded networks are averaged (an :class:`EnsembleWeights` with uniform weights)
* ensemble     hybrid + boosting, convex weights on the logit scale chosen by log-loss on cross-fitted predictions
               of set A (``--folds``-fold over the training + validation stays; the hybrid with one seed and the
               early-stopping epoch count, boosting with its early-stopping tree count), so the weights rest on
               4,000 stays instead of a 600-stay validation split (``--ensemble-weights val`` uses that split)
* boosting     :class:`~healthfusion.models.boosting.BoostingClassifier` (LightGBM, learning rate 0.01, L2 10, early
               stopping after 300 rounds without gain on the validation split) on the engineered summary features
               (``engineered_features``: per-variable last/mean/min/max/std/count/first/sum/slope + static)
* logistic regression, svm, random forest: ``make_baseline`` on the same engineered features
* SAPS-I       the challenge's SAPS-I score, mapped to a probability by a one-feature logistic fit on the training
               stays (a monotone map: its AUROC/AUPRC are those of the raw score)

Writes ``comparison.csv`` (every metric with bootstrap 95% CIs), ``predictions.csv``, ``ensemble.json``,
``roc.png``/``pr.png`` and ``summary.json`` (or ``cv_folds.csv``/``cv_summary.csv`` with ``--cv``) to ``--out``.

    python benchmarks/physionet2012_mortality.py                    # A -> B, about 6 min on 2 CPU cores
    python benchmarks/physionet2012_mortality.py --cv               # 5-fold CV on A + B, about 5x longer
    python benchmarks/physionet2012_mortality.py --cv-a boosting    # model selection: 5-fold CV on set A only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from healthfusion.data.cohort import Cohort  # noqa: E402
from healthfusion.data.domains import concat_cohorts, labelled_ids  # noqa: E402
from healthfusion.data.sources import physionet2012  # noqa: E402
from healthfusion.data.splits import split_patients  # noqa: E402
from healthfusion.evaluation.bootstrap import resample_indices  # noqa: E402
from healthfusion.evaluation.compare import comparison_table, format_comparison  # noqa: E402
from healthfusion.evaluation.metrics import auprc, auroc  # noqa: E402
from healthfusion.evaluation.plots import plot_pr, plot_roc  # noqa: E402
from healthfusion.features.compose import CohortFeaturizer, engineered_features  # noqa: E402
from healthfusion.features.summary import SUMMARY_STATS  # noqa: E402
from healthfusion.features.summary_encoding import SummaryTransformer  # noqa: E402
from healthfusion.features.timeseries import TimeSeriesTransformer  # noqa: E402
from healthfusion.models.boosting import BoostingClassifier  # noqa: E402
from healthfusion.models.classical import make_baseline  # noqa: E402
from healthfusion.models.ensemble import EnsembleWeights, combine, fit_weights  # noqa: E402
from healthfusion.models.hybrid import HybridModel  # noqa: E402
from healthfusion.training import Trainer, TrainerConfig  # noqa: E402
from healthfusion.workflows.ensemble import cross_fitted  # noqa: E402
from healthfusion.workflows.modeling import hybrid_config  # noqa: E402

LABEL = "in_hospital_death"
HYBRID, ENSEMBLE, BOOSTING, SAPS = "hybrid", "ensemble (hybrid + boosting)", "boosting", "SAPS-I"
BASELINES = {"logistic regression": "logistic_regression", "svm": "svm", "random forest": "random_forest"}
ORDER = (HYBRID, ENSEMBLE, BOOSTING, *BASELINES, SAPS)
STATS = (*SUMMARY_STATS, "first", "sum", "slope")
"""Per-variable statistics of the engineered features and of the hybrid's wide input (chosen by CV on set A)."""
BOOSTING_PARAMS = {"learning_rate": 0.01, "n_estimators": 6000, "early_stopping_rounds": 300, "reg_lambda": 10.0}
"""LightGBM settings that differ from :class:`BoostingClassifier`'s defaults (chosen by CV on set A)."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/physionet2012",
                   help="folder with set-a.tar.gz, set-b.tar.gz and Outcomes-a/b.txt")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/physionet2012-<time>)")
    p.add_argument("--cv", action="store_true", help="5-fold patient-level CV on A + B instead of A -> B")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split and of the CV folds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                   help="seeds of the hybrid networks whose logits are averaged (and of the baselines: the first)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--step", type=float, default=2.0, help="grid step of the time series, hours")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
                   help="bidirectional LSTM (default; chosen by CV on set A)")
    p.add_argument("--input-decay", action="store_true",
                   help="GRU-D-style learned decay of the carried-forward values toward the training mean")
    p.add_argument("--ts-encoder", choices=("lstm", "transformer"), default="lstm",
                   help="time-series encoder of the hybrid (transformer: d_model = --hidden, 2 layers, 4 heads)")
    p.add_argument("--no-summary", action="store_true", help="hybrid without the summary (wide) input")
    p.add_argument("--basic-stats", action="store_true",
                   help="only last/mean/min/max/std/count per variable (without first/sum/slope) in the engineered "
                        "features and the wide input")
    p.add_argument("--ensemble-weights", choices=("oof", "val"), default="oof",
                   help="fit the ensemble's weights on cross-fitted (out-of-fold) predictions over the training and "
                        "validation stays (oof, default) or on the validation split alone (val)")
    p.add_argument("--cv-a", choices=("boosting", "hybrid"), default=None,
                   help="model selection only: stratified 5-fold CV on set A (set B is not read), pooled out-of-fold "
                        "AUROC of boosting (--reps repetitions) or of the hybrid (logits averaged over --seeds), with boosting and "
                        "their ensemble on the same folds")
    p.add_argument("--reps", type=int, default=3, help="repetitions (fold seeds 0, 1, ...) of --cv-a boosting")
    p.add_argument("--boosting-params", type=json.loads, default=None,
                   help="JSON object replacing BOOSTING_PARAMS, e.g. '{}' for BoostingClassifier's defaults")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2, help="torch and LightGBM threads")
    return p.parse_args()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def make_featurizer(args: argparse.Namespace) -> CohortFeaturizer:
    stats = SUMMARY_STATS if args.basic_stats else STATS
    return CohortFeaturizer(("ts", "static"), label=LABEL, summary=not args.no_summary,
                            transformers={"ts": TimeSeriesTransformer(hours=48.0, step=args.step),
                                          "summary": SummaryTransformer(hours=48.0, stats=stats)})


def engineered(cohort: Cohort, feat: CohortFeaturizer, ids: list[str], args: argparse.Namespace) -> pd.DataFrame:
    return engineered_features(cohort, feat, ids, stats=SUMMARY_STATS if args.basic_stats else STATS)


def train_hybrid(feat: CohortFeaturizer, train, val, seed: int, args: argparse.Namespace,
                 epochs: int | None = None) -> tuple[HybridModel, Trainer, int]:
    """One hybrid network: early stopping on ``val``, or (``val=None``) exactly ``epochs`` epochs."""
    torch.manual_seed(seed)
    model = HybridModel(hybrid_config(feat, fusion="concat", hidden=args.hidden, bidirectional=args.bidirectional,
                                      dropout=args.dropout, input_decay=args.input_decay,
                                      ts_encoder=args.ts_encoder))
    trainer = Trainer(TrainerConfig(max_epochs=epochs or args.max_epochs, batch_size=64, lr=args.lr,
                                    weight_decay=args.weight_decay, patience=args.patience, monitor="val_loss",
                                    seed=seed, num_threads=args.threads))
    history = trainer.fit(model, train, val, head_kind="binary")
    return model, trainer, (history.best_epoch + 1) if val is not None else len(history)


def out_of_fold(cohort: Cohort, ids: list[str], args: argparse.Namespace, epochs: int, gbm: BoostingClassifier,
                seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cross-fitted predictions of the hybrid (one seed, ``epochs`` epochs) and of boosting (``gbm``'s tree count)
    for every stay in ``ids``: each stay is scored by models fitted on the other ``args.folds - 1`` folds
    (:func:`healthfusion.workflows.ensemble.cross_fitted`, as a run config's ``ensemble.weights: cross_fit``)."""
    y, p = cross_fitted(cohort, ids, LABEL, fit_featurizer=lambda fit_ids: make_featurizer(args).fit(cohort, fit_ids),
                        fit_network=lambda feat, train: train_hybrid(feat, train, None, seed, args, epochs=epochs)[0],
                        boosting=gbm, stats=SUMMARY_STATS if args.basic_stats else STATS, folds=args.folds,
                        seed=seed + 100)
    return y.astype(int), {HYBRID: p["hybrid"], BOOSTING: p["gradient_boosting"]}


def boosting(args: argparse.Namespace, **params) -> BoostingClassifier:
    return BoostingClassifier(**{**(BOOSTING_PARAMS if args.boosting_params is None else args.boosting_params),
                                 **params})


def run_cv_a(args: argparse.Namespace, out: Path) -> None:
    """Model selection on set A alone: pooled out-of-fold AUROC over stratified 5-fold splits of its 4,000 stays."""
    say("reading set A (set B is not read)")
    a = physionet2012.build(args.data / "set-a.tar.gz", task=LABEL)
    ids = labelled_ids(a, a.stay_ids, LABEL)
    def labels_of(stays: list[str]) -> np.ndarray:
        return a.label(LABEL).reindex(stays).to_numpy().astype(int)

    y = labels_of(ids)
    rows = []
    if args.cv_a == "boosting":
        x = engineered(a, make_featurizer(args).fit(a, ids), ids, args)  # unsupervised: variables, static coding
        for rep in range(args.reps):
            oof = np.zeros(len(y))
            for fit, held in StratifiedKFold(5, shuffle=True, random_state=rep).split(x, y):
                gbm = boosting(args, random_state=rep, n_jobs=args.threads).fit(x.iloc[fit], y[fit])
                oof[held] = gbm.predict_proba(x.iloc[held])[:, 1]
            rows.append({"rep": rep, "auroc": auroc(y, oof)})
            say(f"repetition {rep}: out-of-fold AUROC {rows[-1]['auroc']:.4f}")
    else:
        oof = {HYBRID: np.zeros(len(y)), BOOSTING: np.zeros(len(y))}
        fold_of = np.zeros(len(y), dtype=int)
        for k, (fit, held) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(ids, y)):
            rest = a.stays[a.stays["stay_id"].isin([ids[i] for i in fit])]
            inner = split_patients(rest, {"train": 1 - args.val_fraction, "val": args.val_fraction}, seed=1 + k,
                                   stratify=a.label(LABEL))
            train_ids, val_ids = inner.index[inner == "train"].tolist(), inner.index[inner == "val"].tolist()
            held_ids = [ids[i] for i in held]
            feat = make_featurizer(args).fit(a, train_ids)
            train, val, test = (feat.transform(a, s) for s in (train_ids, val_ids, held_ids))
            nets, bests = {}, []
            for seed in args.seeds:  # one network per seed, logits averaged (as the A -> B run's hybrid)
                model, trainer, best = train_hybrid(feat, train, val, seed, args)
                nets[f"seed{seed}"], bests = trainer.predict(model, test), [*bests, best]
            oof[HYBRID][held] = combine(nets, EnsembleWeights.uniform(list(nets)))
            best = ",".join(map(str, bests))
            # boosting on the same inner split (early stopping on its validation part), as in the A -> B run
            gbm = boosting(args, random_state=args.seeds[0], n_jobs=args.threads).fit(
                engineered(a, feat, train_ids, args), labels_of(train_ids),
                eval_set=(engineered(a, feat, val_ids, args), labels_of(val_ids)))
            oof[BOOSTING][held] = gbm.predict_proba(engineered(a, feat, held_ids, args))[:, 1]
            fold_of[held] = k
            rows.append({"fold": k, "auroc": auroc(y[held], oof[HYBRID][held]), "best_epoch": best,
                         "boosting_auroc": auroc(y[held], oof[BOOSTING][held]), "boosting_trees": gbm.n_trees_})
            say(f"fold {k}: hybrid AUROC {rows[-1]['auroc']:.4f} (best epoch {best}), boosting "
                f"{rows[-1]['boosting_auroc']:.4f} ({gbm.n_trees_} trees)")
        # the ensemble a run would build, scored out of fold: each fold's weights are fitted on the out-of-fold
        # predictions of the other four folds, by the grid's log-loss (ensemble.fit: grid) and by stacking
        stacked = f"{ENSEMBLE}_stacking"
        weights, fits = [], {ENSEMBLE: ("grid", []), stacked: ("stacking", [])}
        for name, (method, hybrid_weights) in fits.items():
            oof[name] = np.zeros(len(y))
            for k in range(5):
                other, here = fold_of != k, fold_of == k
                spec = fit_weights({m: oof[m][other] for m in (HYBRID, BOOSTING)}, y[other], criterion="log_loss",
                                   method=method)
                oof[name][here] = combine({m: oof[m][here] for m in (HYBRID, BOOSTING)}, spec)
                hybrid_weights.append(spec.weight(HYBRID))
        weights = fits[ENSEMBLE][1]
        gain = paired_auroc_difference(y, oof[ENSEMBLE], oof[BOOSTING], args.n_boot)
        gain_stacked = paired_auroc_difference(y, oof[stacked], oof[BOOSTING], args.n_boot)
        say(f"stacking: ensemble {auroc(y, oof[stacked]):.4f} (hybrid weight {np.mean(fits[stacked][1]):.2f}); "
            f"ensemble - boosting {gain_stacked['difference']:+.4f} ({gain_stacked['ci_low']:+.4f} to "
            f"{gain_stacked['ci_high']:+.4f})")
        # an upper bound, not an estimate: the best single hybrid weight chosen in hindsight on all of A
        grid = np.round(np.arange(0.0, 1.0001, 0.05), 2)
        best_w = {w: auroc(y, combine({HYBRID: oof[HYBRID], BOOSTING: oof[BOOSTING]},
                                      EnsembleWeights((HYBRID, BOOSTING), (w, 1 - w)))) for w in grid}
        w_star = max(best_w, key=best_w.get)
        rows.append({"fold": "pooled", "auroc": auroc(y, oof[HYBRID]), "boosting_auroc": auroc(y, oof[BOOSTING]),
                     "ensemble_auroc": auroc(y, oof[ENSEMBLE]), "ensemble_minus_boosting": gain["difference"],
                     "ci_low": gain["ci_low"], "ci_high": gain["ci_high"],
                     "hybrid_weight": float(np.mean(weights)), "hindsight_weight": float(w_star),
                     "hindsight_auroc": best_w[w_star], "stacking_auroc": auroc(y, oof[stacked]),
                     "stacking_minus_boosting": gain_stacked["difference"],
                     "stacking_ci_low": gain_stacked["ci_low"], "stacking_ci_high": gain_stacked["ci_high"],
                     "stacking_hybrid_weight": float(np.mean(fits[stacked][1]))})
        pd.DataFrame({"stay_id": ids, "y": y, "fold": fold_of, **oof}).to_csv(out / "oof.csv", index=False)
        say(f"pooled: hybrid {rows[-1]['auroc']:.4f}, boosting {rows[-1]['boosting_auroc']:.4f}, ensemble "
            f"{rows[-1]['ensemble_auroc']:.4f} (hybrid weight {np.mean(weights):.2f}); ensemble - boosting "
            f"{gain['difference']:+.4f} ({gain['ci_low']:+.4f} to {gain['ci_high']:+.4f}); upper bound: the best "
            f"hybrid weight in hindsight ({w_star:.2f}) gives {best_w[w_star]:.4f}")
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "cv_a.csv", index=False)
    pooled = frame["auroc"].mean() if args.cv_a == "boosting" else frame["auroc"].iloc[-1]
    print(f"\n{args.cv_a} on set A, pooled out-of-fold AUROC: {pooled:.4f}\nwritten to {out}")


def fit_and_score(cohort: Cohort, train_ids: list[str], val_ids: list[str], test_cohort: Cohort,
                  test_ids: list[str], args: argparse.Namespace) -> dict:
    """Fit every model on ``train_ids`` (validation: ``val_ids``), score ``test_ids``.

    Returns ``{"test": {model: p}, "val": {model: p}, "y_test", "y_val", "ensemble": EnsembleWeights, "info"}``.
    """
    seed0 = args.seeds[0]
    feat = make_featurizer(args).fit(cohort, train_ids)
    data = {"train": feat.transform(cohort, train_ids), "val": feat.transform(cohort, val_ids),
            "test": feat.transform(test_cohort, test_ids)}
    y = {k: d["target"].astype(int) for k, d in data.items()}
    x = {"train": engineered(cohort, feat, train_ids, args), "val": engineered(cohort, feat, val_ids, args),
         "test": engineered(test_cohort, feat, test_ids, args)}
    say(f"features: {feat.input_dims()}, engineered {x['train'].shape[1]} columns; "
        f"train {len(train_ids)}, val {len(val_ids)}, test {len(test_ids)} stays")
    val_p, test_p, info = {}, {}, {}

    # hybrid: one network per seed, logits averaged
    members_val, members_test, epochs = {}, {}, []
    for seed in args.seeds:
        t0 = time.perf_counter()
        model, trainer, best = train_hybrid(feat, data["train"], data["val"], seed, args)
        members_val[f"seed{seed}"] = trainer.predict(model, data["val"])
        members_test[f"seed{seed}"] = trainer.predict(model, data["test"])
        epochs.append(best)
        say(f"hybrid seed {seed}: best epoch {best}, val AUROC {auroc(y['val'], members_val[f'seed{seed}']):.4f}, "
            f"{time.perf_counter() - t0:.0f} s")
    seeds_spec = EnsembleWeights.uniform(list(members_val))
    val_p[HYBRID], test_p[HYBRID] = combine(members_val, seeds_spec), combine(members_test, seeds_spec)
    info["hybrid_best_epochs"] = epochs
    info["hybrid_single_seed_test_auroc"] = [auroc(y["test"], p) for p in members_test.values()]

    # boosting with early stopping on the validation split
    t0 = time.perf_counter()
    gbm = boosting(args, random_state=seed0, n_jobs=args.threads)
    gbm.fit(x["train"], y["train"], eval_set=(x["val"], y["val"]))
    val_p[BOOSTING], test_p[BOOSTING] = gbm.predict_proba(x["val"])[:, 1], gbm.predict_proba(x["test"])[:, 1]
    info["boosting_trees"] = gbm.n_trees_
    say(f"boosting: {gbm.n_trees_} trees, val AUROC {auroc(y['val'], val_p[BOOSTING]):.4f}, "
        f"{time.perf_counter() - t0:.0f} s")

    # the ensemble's weights come from predictions on stays the scoring models were not trained on: cross-fitted
    # over the training + validation stays (default), or the validation split alone
    if args.ensemble_weights == "oof":
        t0 = time.perf_counter()
        y_oof, p_oof = out_of_fold(cohort, train_ids + val_ids, args, epochs=int(np.median(epochs)), gbm=gbm,
                                   seed=seed0)
        spec = fit_weights(p_oof, y_oof, criterion="log_loss")
        info["oof_auroc"] = {name: auroc(y_oof, p) for name, p in p_oof.items()}
        say(f"out-of-fold predictions on {len(y_oof)} stays: " + ", ".join(
            f"{name} AUROC {v:.4f}" for name, v in info["oof_auroc"].items()) + f", {time.perf_counter() - t0:.0f} s")
    else:
        spec = fit_weights({HYBRID: val_p[HYBRID], BOOSTING: val_p[BOOSTING]}, y["val"], criterion="log_loss")
    test_p[ENSEMBLE] = combine({HYBRID: test_p[HYBRID], BOOSTING: test_p[BOOSTING]}, spec)
    val_p[ENSEMBLE] = combine({HYBRID: val_p[HYBRID], BOOSTING: val_p[BOOSTING]}, spec)
    say(f"ensemble weights ({args.ensemble_weights}, log-loss): {dict(zip(spec.members, spec.weights, strict=True))}")

    for name, key in BASELINES.items():
        t0 = time.perf_counter()
        est = make_baseline(key, seed=seed0)
        if key == "random_forest":
            est.set_params(model__n_jobs=args.threads)
        est.fit(x["train"], y["train"])
        val_p[name], test_p[name] = est.predict_proba(x["val"])[:, 1], est.predict_proba(x["test"])[:, 1]
        say(f"{name}: {time.perf_counter() - t0:.0f} s")

    # SAPS-I, recalibrated to a probability on the training stays (monotone: same AUROC as the raw score)
    def saps(c: Cohort, ids: list[str]) -> np.ndarray:
        return pd.to_numeric(c.labels.set_index("stay_id")["saps_i"].reindex(ids)).to_numpy(dtype=float)

    s_train = saps(cohort, train_ids)
    ok = ~np.isnan(s_train)
    calib = LogisticRegression().fit(s_train[ok, None], y["train"][ok])
    for split, c, ids, store in (("val", cohort, val_ids, val_p), ("test", test_cohort, test_ids, test_p)):
        s = saps(c, ids)
        p = np.full(len(s), np.nan)
        p[~np.isnan(s)] = calib.predict_proba(s[~np.isnan(s), None])[:, 1]
        store[SAPS] = p
        if split == "test":
            info["saps_raw_test_auroc"] = float(roc_auc_score(y["test"][~np.isnan(s)], s[~np.isnan(s)]))
            info["saps_missing_test"] = int(np.isnan(s).sum())
    return {"test": test_p, "val": val_p, "y_test": y["test"], "y_val": y["val"], "ensemble": spec, "info": info}


def paired_auroc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    """AUROC(a) - AUROC(b) with a paired, stratified percentile-bootstrap 95% interval."""
    diffs = np.array([auroc(y[i], p_a[i]) - auroc(y[i], p_b[i])
                      for chunk in resample_indices(y, n_boot, seed) for i in chunk])
    low, high = np.quantile(diffs, [0.025, 0.975])
    return {"difference": auroc(y, p_a) - auroc(y, p_b), "ci_low": float(low), "ci_high": float(high),
            "share_of_resamples_above_0": float((diffs > 0).mean())}


def results_for(scored: dict) -> dict:
    out = {}
    for name in ORDER:
        p = scored["test"][name]
        ok = ~np.isnan(p)
        out[name] = (scored["y_test"][ok], p[ok])
    return out


def run_a_to_b(args: argparse.Namespace, out: Path) -> None:
    say("reading set A and set B")
    a = physionet2012.build(args.data / "set-a.tar.gz", task=LABEL)
    b = physionet2012.build(args.data / "set-b.tar.gz", task=LABEL)
    a_ids = labelled_ids(a, a.stay_ids, LABEL)
    split = split_patients(a.stays[a.stays["stay_id"].isin(a_ids)],
                           {"train": 1 - args.val_fraction, "val": args.val_fraction}, seed=args.split_seed,
                           stratify=a.label(LABEL))
    train_ids, val_ids = split.index[split == "train"].tolist(), split.index[split == "val"].tolist()
    scored = fit_and_score(a, train_ids, val_ids, b, labelled_ids(b, b.stay_ids, LABEL), args)

    results = results_for(scored)
    table = comparison_table(results, threshold=0.5, n_boot=args.n_boot, seed=0)
    table.to_csv(out / "comparison.csv")
    plot_roc(results, out / "roc.png", title="PhysioNet 2012 set B: ROC (trained on set A)")
    plot_pr(results, out / "pr.png", title="PhysioNet 2012 set B: precision-recall (trained on set A)")
    frame = pd.DataFrame({"stay_id": labelled_ids(b, b.stay_ids, LABEL), "y_true": scored["y_test"]})
    for name in ORDER:
        frame[name] = scored["test"][name]
    frame.to_csv(out / "predictions.csv", index=False)
    scored["ensemble"].save(out / "ensemble.json")

    y = scored["y_test"]
    versus = {name: paired_auroc_difference(y, scored["test"][name], scored["test"][BOOSTING], args.n_boot)
              for name in (HYBRID, ENSEMBLE)}
    summary = {
        "setting": "train on set A (validation split of A for early stopping; ensemble weights from "
                   f"{'cross-fitted predictions on A' if args.ensemble_weights == 'oof' else 'the validation split'}"
                   "), test on set B",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "n_test": int(len(y)), "prevalence_test": float(y.mean()),
        "auroc": {n: float(table.loc[n, "auroc"]) for n in ORDER},
        "auprc": {n: float(table.loc[n, "auprc"]) for n in ORDER},
        "auroc_ratio_vs_boosting": {n: float(table.loc[n, "auroc"] / table.loc[BOOSTING, "auroc"])
                                    for n in (HYBRID, ENSEMBLE)},
        "auroc_difference_vs_boosting": versus,
        "ensemble": scored["ensemble"].to_dict(),
        **scored["info"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(format_comparison(table).to_string())
    print()
    for name in (HYBRID, ENSEMBLE):
        v = versus[name]
        print(f"{name} / boosting AUROC ratio: {summary['auroc_ratio_vs_boosting'][name]:.4f}; difference "
              f"{v['difference']:+.4f} (95% CI {v['ci_low']:+.4f} to {v['ci_high']:+.4f}, paired bootstrap)")
    print(f"SAPS-I raw-score AUROC: {scored['info']['saps_raw_test_auroc']:.4f} "
          f"({scored['info']['saps_missing_test']} test stays without SAPS-I)")
    print(f"\nwritten to {out}")


def run_cv(args: argparse.Namespace, out: Path) -> None:
    say("reading set A and set B (pooled for cross-validation)")
    pooled = concat_cohorts([physionet2012.build(args.data / f"set-{s}.tar.gz", task=LABEL) for s in "ab"])
    ids = labelled_ids(pooled, pooled.stay_ids, LABEL)
    stays = pooled.stays[pooled.stays["stay_id"].isin(ids)]
    folds = split_patients(stays, {f"fold{k}": 1.0 / args.folds for k in range(args.folds)}, seed=args.split_seed,
                           stratify=pooled.label(LABEL))
    rows = []
    for k in range(args.folds):
        say(f"fold {k + 1} of {args.folds}")
        test_ids = folds.index[folds == f"fold{k}"].tolist()
        rest = stays[stays["stay_id"].isin(folds.index[folds != f"fold{k}"])]
        inner = split_patients(rest, {"train": 1 - args.val_fraction, "val": args.val_fraction},
                               seed=args.split_seed + 1 + k, stratify=pooled.label(LABEL))
        scored = fit_and_score(pooled, inner.index[inner == "train"].tolist(), inner.index[inner == "val"].tolist(),
                               pooled, test_ids, args)
        for name, (y, p) in results_for(scored).items():
            rows.append({"fold": k, "model": name, "n": len(y), "auroc": auroc(y, p), "auprc": auprc(y, p)})
        rows.append({"fold": k, "model": "ensemble weight of hybrid", "auroc": scored["ensemble"].weight(HYBRID)})
        pd.DataFrame(rows).to_csv(out / "cv_folds.csv", index=False)
        fold = pd.DataFrame(rows).query("fold == @k").set_index("model")["auroc"]
        say("fold AUROC: " + ", ".join(f"{m} {v:.4f}" for m, v in fold.items()))
    frame = pd.DataFrame(rows)
    frame = frame[frame["model"].isin(ORDER)]
    summary = frame.groupby("model", sort=False)[["auroc", "auprc"]].agg(["mean", "std"])
    wins = (frame.pivot(index="fold", columns="model", values="auroc")[[HYBRID, ENSEMBLE]].sub(
        frame.pivot(index="fold", columns="model", values="auroc")[BOOSTING], axis=0) > 0).sum()
    summary.to_csv(out / "cv_summary.csv")
    print()
    print(f"{args.folds}-fold patient-level CV on A + B ({len(ids)} stays), mean +- sd over folds:")
    for name, row in summary.iterrows():
        print(f"  {name:32s} AUROC {row[('auroc', 'mean')]:.4f} +- {row[('auroc', 'std')]:.4f}   "
              f"AUPRC {row[('auprc', 'mean')]:.4f} +- {row[('auprc', 'std')]:.4f}")
    for name in (HYBRID, ENSEMBLE):
        ratio = summary.loc[name, ("auroc", "mean")] / summary.loc[BOOSTING, ("auroc", "mean")]
        print(f"{name} / boosting mean AUROC ratio: {ratio:.4f} (better than boosting in {wins[name]} of "
              f"{args.folds} folds)")
    print(f"\nwritten to {out}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    mode = f"cv-a-{args.cv_a}" if args.cv_a else "cv" if args.cv else "a-to-b"
    out = args.out or Path("runs") / f"physionet2012-{mode}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    (run_cv_a if args.cv_a else run_cv if args.cv else run_a_to_b)(args, out)
    say(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
