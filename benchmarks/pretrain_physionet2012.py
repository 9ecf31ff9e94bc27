"""Does self-supervised pretraining of the time-series encoder help with few labels? PhysioNet 2012 (run on demand).

Protocol (every choice made before looking at evaluation results):

1. Sets A and B are pooled (8,000 stays) and split once, stratified on in-hospital death (seed 0), into an
   **evaluation split** (``--eval-fraction``, default 25%) and a **pool**. Evaluation stays are never used for
   pretraining (not even their inputs) nor for fine-tuning.
2. The LSTM encoder is pretrained on the pool's stays **without labels** (masked-value reconstruction,
   :mod:`healthfusion.models.pretraining`), with 10% of the pool as validation for its own early stopping.
3. For each seed, the pool's labelled stays are put in a stratified random order and the first ``n`` stays are the
   labelled budget (``--sizes``; nested per seed). 20% of the budget (stratified) is the fine-tuning validation set
   for early stopping on validation loss. Features: the 48 h grid (2 h steps, the pretrained encoder's
   preprocessing, fitted without labels) plus the static features fitted on the budget's training part.
4. Arms, all with the same hybrid architecture (LSTM + static MLP, concat fusion):
   ``scratch`` (random init), ``pretrained_full`` (full fine-tuning), ``linear_probe`` (pretrained LSTM frozen),
   ``gradual_unfreeze`` (``--arms`` selects), and a logistic regression on the engineered summaries of the same
   stays for context.
5. AUROC on the evaluation split; mean over seeds with a t-interval (95%) and the paired difference to ``scratch``.
   For the largest size, AUROC per care unit, age group and sex (mean over seeds) and its spread.

Writes ``runs.csv`` (one row per arm, size, seed), ``summary.csv``, ``robustness.csv``, ``summary.json`` to ``--out``.

    python benchmarks/pretrain_physionet2012.py                          # quick: 3 seeds, 50/100/250/1000
    python benchmarks/pretrain_physionet2012.py --seeds 0 1 2 3 4 --sizes 50 100 250 500 1000 2000 \\
        --pretrain-epochs 40 --hidden 64 --arms scratch pretrained_full linear_probe gradual_unfreeze   # fuller
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from healthfusion.data.domains import concat_cohorts  # noqa: E402
from healthfusion.data.sources import physionet2012  # noqa: E402
from healthfusion.data.splits import split_patients  # noqa: E402
from healthfusion.evaluation.bootstrap import seed_interval  # noqa: E402
from healthfusion.evaluation.metrics import auroc  # noqa: E402
from healthfusion.evaluation.robustness import domain_spread  # noqa: E402
from healthfusion.features.compose import CohortFeaturizer, engineered_features  # noqa: E402
from healthfusion.features.timeseries import TimeSeriesTransformer  # noqa: E402
from healthfusion.models.classical import make_baseline  # noqa: E402
from healthfusion.models.hybrid import HybridModel  # noqa: E402
from healthfusion.training import Trainer, TrainerConfig  # noqa: E402
from healthfusion.training.finetune import FinetuneConfig  # noqa: E402
from healthfusion.workflows.config import FeatureSpec, SourceSpec  # noqa: E402
from healthfusion.workflows.modeling import (  # noqa: E402
    build_hybrid,
    hybrid_config,
    load_pretrained,
    use_pretrained_preprocessing,
)
from healthfusion.workflows.pretrain import EncoderSpec, PretrainRunConfig, run_pretraining  # noqa: E402

LABEL = "in_hospital_death"
DOMAINS = ["care_unit", "age_group", "sex"]
STRATEGY = {"pretrained_full": "full", "linear_probe": "linear_probe", "gradual_unfreeze": "gradual_unfreeze"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/physionet2012")
    p.add_argument("--out", type=Path, default=Path("runs/pretrain-physionet2012"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 250, 1000])
    p.add_argument("--arms", nargs="+", default=["scratch", "pretrained_full", "linear_probe"],
                   choices=["scratch", *STRATEGY])
    p.add_argument("--eval-fraction", type=float, default=0.25)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--step", type=float, default=2.0)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def stratified_order(ids: list[str], y: pd.Series, seed: int) -> list[str]:
    """Ids in an order whose every prefix holds about the pool's prevalence (shuffle each class, interleave)."""
    rng = np.random.default_rng([seed, 11])
    keys = {}
    for _, group in y.loc[ids].groupby(y.loc[ids]):
        members = group.index.to_numpy().copy()
        rng.shuffle(members)
        for rank, sid in enumerate(members):
            keys[sid] = (rank + rng.uniform()) / len(members)
    return sorted(keys, key=keys.get)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sets = [args.data / "set-a.tar.gz", args.data / "set-b.tar.gz"]
    say("reading PhysioNet 2012 sets A and B")
    cohort = concat_cohorts([physionet2012.build(s, task=LABEL) for s in sets])
    y_all = cohort.label(LABEL)
    labelled = y_all.dropna().index.tolist()
    stays = cohort.stays.set_index("stay_id").loc[labelled].reset_index()
    split = split_patients(stays, {"eval": args.eval_fraction, "pool": 1 - args.eval_fraction}, seed=0,
                           stratify=y_all)
    eval_ids = split.index[split == "eval"].tolist()
    pool_ids = split.index[split == "pool"].tolist()
    say(f"{len(cohort)} stays: evaluation {len(eval_ids)} (prevalence {y_all.loc[eval_ids].mean():.3f}), "
        f"pool {len(pool_ids)}")

    say("pretraining the LSTM encoder on the pool without labels (masked-value reconstruction)")
    pre_cfg = PretrainRunConfig(
        out=args.out / "encoder", overwrite=True, data=[SourceSpec(source="physionet2012", path=s) for s in sets],
        modality="ts", features=FeatureSpec(hours=48, step=args.step), encoder=EncoderSpec(hidden=args.hidden),
        training={"max_epochs": args.pretrain_epochs, "batch_size": 64, "lr": 2e-3, "patience": 4,
                  "num_threads": args.threads},  # the rest from the pretraining preset
        notes="benchmarks/pretrain_physionet2012.py: evaluation stays excluded",
    )
    excluded = set(cohort.stay_ids.tolist()) - set(pool_ids)
    result = run_pretraining(pre_cfg, exclude=excluded, cohort=cohort)
    pre_hist = result["history"]
    say(f"pretrained: {len(pre_hist.train_loss)} epochs, best val loss {min(pre_hist.val_loss):.4f} "
        f"(epoch 1: {pre_hist.val_loss[0]:.4f}), {sum(pre_hist.epoch_seconds):.0f} s")
    loaded = load_pretrained({"ts": result["path"]})
    ts_config = loaded["ts"][0].config

    rows, group_rows = [], []
    for seed in args.seeds:
        order = stratified_order(pool_ids, y_all, seed)
        for n in args.sizes:
            budget = order[:n]
            frac = split_patients(cohort.stays.set_index("stay_id").loc[budget].reset_index(),
                                  {"train": 0.8, "val": 0.2}, seed=seed, stratify=y_all)
            fit_ids, val_ids = frac.index[frac == "train"].tolist(), frac.index[frac == "val"].tolist()
            feat = CohortFeaturizer(("ts", "static"), label=LABEL,
                                    transformers={"ts": TimeSeriesTransformer(hours=48, step=args.step)})
            feat = use_pretrained_preprocessing(feat.fit(cohort, fit_ids), loaded)
            data = {k: feat.transform(cohort, v) for k, v in (("fit", fit_ids), ("val", val_ids), ("eval", eval_ids))}
            y_eval = data["eval"]["target"]
            for arm in args.arms:
                start = time.perf_counter()
                kw = dict(hidden=args.hidden, dropout=0.1)
                if arm == "scratch":
                    torch.manual_seed(seed)
                    model = HybridModel(hybrid_config(feat, pretrained={"ts": ts_config}, **kw))
                    finetune = None
                else:
                    torch.manual_seed(seed)
                    model = build_hybrid(feat, loaded, **kw)
                    finetune = FinetuneConfig(strategy=STRATEGY[arm], modules=("encoders.ts",), unfreeze_every=3)
                trainer = Trainer(TrainerConfig(max_epochs=args.finetune_epochs, batch_size=32, lr=1e-3,
                                                patience=6, monitor="val_loss", seed=seed, finetune=finetune,
                                                num_threads=args.threads))
                history = trainer.fit(model, data["fit"], data["val"])
                p = trainer.predict(model, data["eval"])
                rows.append({"arm": arm, "n_labelled": n, "seed": seed, "auroc": auroc(y_eval, p),
                             "epochs": len(history.train_loss), "best_epoch": history.best_epoch,
                             "seconds": time.perf_counter() - start})
                if n == max(args.sizes):
                    groups, _ = domain_spread(y_eval, p, cohort.stays.set_index("stay_id").loc[eval_ids, DOMAINS],
                                              n_boot=1)
                    group_rows.append(groups.assign(arm=arm, seed=seed)[["arm", "seed", "attribute", "group", "n",
                                                                          "n_positive", "auroc"]])
                say(f"seed {seed} n={n:5d} {arm:17s} AUROC {rows[-1]['auroc']:.3f} "
                    f"({rows[-1]['epochs']} epochs, {rows[-1]['seconds']:.0f} s)")
            x = {k: engineered_features(cohort, feat, ids) for k, ids in (("fit", budget), ("eval", eval_ids))}
            lr = make_baseline("logistic_regression", seed=seed).fit(x["fit"], y_all.loc[budget].to_numpy())
            rows.append({"arm": "logistic_regression", "n_labelled": n, "seed": seed,
                         "auroc": auroc(y_eval, lr.predict_proba(x["eval"])[:, 1])})
            pd.DataFrame(rows).to_csv(args.out / "runs.csv", index=False)

    runs = pd.DataFrame(rows)
    summary = []
    for (arm, n), part in runs.groupby(["arm", "n_labelled"], sort=True):
        mean, low, high = seed_interval(part["auroc"].to_numpy(), bounds=(0.0, 1.0))
        row = {"arm": arm, "n_labelled": n, "seeds": len(part), "auroc": mean, "ci_low": low, "ci_high": high}
        if arm != "scratch" and "scratch" in args.arms:
            base = runs[(runs["arm"] == "scratch") & (runs["n_labelled"] == n)].set_index("seed")["auroc"]
            diff = part.set_index("seed")["auroc"] - base.reindex(part["seed"]).to_numpy()
            row["diff_vs_scratch"], row["diff_ci_low"], row["diff_ci_high"] = seed_interval(diff.to_numpy(), bounds=(-1.0, 1.0))
        summary.append(row)
    summary = pd.DataFrame(summary)
    summary.to_csv(args.out / "summary.csv", index=False)
    if group_rows:
        groups = pd.concat(group_rows)
        per_group = groups.groupby(["arm", "attribute", "group"], as_index=False).agg(
            n=("n", "first"), n_positive=("n_positive", "first"), auroc=("auroc", "mean"))
        per_group.to_csv(args.out / "robustness.csv", index=False)
        ok = per_group[(per_group["n"] >= 10) & (per_group["n_positive"] > 0)]
        spread = ok.groupby(["arm", "attribute"]).agg(worst=("auroc", "min"), best=("auroc", "max"))
        spread["range"] = spread["best"] - spread["worst"]
        spread.to_csv(args.out / "robustness_spread.csv")
        print(spread.round(3).to_string())
    (args.out / "summary.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "eval_stays": len(eval_ids), "pool_stays": len(pool_ids),
        "pretraining": pre_hist.to_dict(), "seconds": time.perf_counter() - t0}, indent=2))
    print(summary.round(3).to_string(index=False))
    say(f"done in {time.perf_counter() - t0:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
