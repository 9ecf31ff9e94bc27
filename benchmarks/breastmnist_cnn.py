"""BreastMNIST with the hybrid model's CNN image encoder, cross-validated on train + val (run on demand, not a test).

Task: malignant (positive, MedMNIST class 0) vs normal/benign ultrasound images, 28x28 grey. The official test split
is withheld, so everything here is stratified K-fold cross-validation on the 546 train + 78 val images: each fold
fits the image normalisation and trains the model on the other folds only, and the held-out fold is scored once.
The hybrid model is used with the image modality only (CNN encoder -> FC -> binary head), trained by the library's
Trainer for a fixed number of epochs with a cosine learning-rate schedule (no early stopping, so no data is held
out of training). Each fold's CNN is an ensemble of ``--ensemble`` models (default 3) trained with consecutive seeds
and averaged; ``--tta`` scores each model also with the encoder's flip test-time augmentation (the image feature
averaged over the image and its left-right mirror, ``model.image.tta: flip`` in a run config) and reports the
ensemble with and without it.

The script prints per-fold AUROC and the pooled out-of-fold metrics (AUROC with a bootstrap 95% CI; accuracy,
precision, recall and F1 at a 0.5 threshold) for the CNN ensemble, for its first model alone, and for two
references: a logistic regression on the raw pixels, trained and scored on the same folds in the same run (its L2
strength chosen by inner CV on each training part), and the MedMNIST v2 paper's ResNet-18 (28) test AUROC of 0.901
(Yang et al., "MedMNIST v2", Scientific Data 2023), a cited figure on the official test split, not a same-split
comparison. It ends with the AUROC ratios against both and the wall time.

Hyperparameters. ``--setting`` picks one of the named settings in ``SETTINGS``. The default ("plain": channels
16-32-64, one 3x3 convolution per block) was chosen during development by comparing pooled out-of-fold AUROC of the
settings on these same folds (docs/benchmarks.md lists them), so its figure carries some selection optimism.
``double`` has two convolutions per block (VGG-style); ``residual`` makes those two a ResNet basic block (identity
or 1x1-projection shortcut, ReLU after the addition) before the same max-pool.
``--nested`` removes it: inside every outer fold the settings named by ``--candidates`` are compared by inner
stratified CV (one model each) on that fold's training part only, and the winner is retrained on the whole training
part and scored on the held-out fold. ``--compare A/oof.csv B/oof.csv`` trains nothing: it reads the out-of-fold
predictions two earlier runs wrote with ``--out`` (same data, folds and seed) and prints the paired bootstrap 95% CI
of the pooled AUROC difference B - A.

    python benchmarks/breastmnist_cnn.py --folds 5 --seed 0 --ensemble 3
    python benchmarks/breastmnist_cnn.py --nested --candidates plain double
    python benchmarks/breastmnist_cnn.py --setting residual --out runs/residual
    python benchmarks/breastmnist_cnn.py --compare runs/plain/oof.csv runs/nested/oof.csv
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from healthfusion.data.sources import medmnist  # noqa: E402
from healthfusion.evaluation.bootstrap import bootstrap_ci, resample_indices  # noqa: E402
from healthfusion.evaluation.compare import comparison_table, format_comparison  # noqa: E402
from healthfusion.evaluation.metrics import auroc  # noqa: E402
from healthfusion.features.compose import CohortFeaturizer  # noqa: E402
from healthfusion.features.dataset import ArrayDataset  # noqa: E402
from healthfusion.features.image import ImageAugmentation, ImageTransformer  # noqa: E402
from healthfusion.models.encoders import CNNEncoderConfig  # noqa: E402
from healthfusion.models.hybrid import HybridConfig, HybridModel  # noqa: E402
from healthfusion.training import Trainer, TrainerConfig  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/medmnist/breastmnist.npz")
RESNET18_28_TEST_AUROC = 0.901  # MedMNIST v2 (Yang et al. 2023), BreastMNIST, ResNet-18 (28), official test split

log = logging.getLogger("breastmnist_cnn")


@dataclass(frozen=True)
class Setting:
    """One candidate: CNN encoder, training schedule and augmentation (None: no augmentation)."""

    channels: tuple[int, ...] = (16, 32, 64)
    convs_per_block: int = 1
    residual: bool = False
    batchnorm: bool = True
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    epochs: int = 50
    batch_size: int = 32
    augmentation: dict | None = None

    def model(self, channels_in: int, size: int) -> HybridModel:
        encoder = CNNEncoderConfig(
            in_channels=channels_in, image_size=size, channels=self.channels, convs_per_block=self.convs_per_block,
            residual=self.residual, batchnorm=self.batchnorm, dropout=self.dropout, out_dim=64,
        )
        return HybridModel(HybridConfig(image=encoder, fc_hidden=(32,), dropout=self.dropout))

    def trainer(self, seed: int, epochs: int | None) -> Trainer:
        return Trainer(TrainerConfig(
            max_epochs=epochs or self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            lr_schedule="cosine", patience=None, seed=seed, device="cpu",
            image_augmentation=ImageAugmentation(**self.augmentation) if self.augmentation is not None else None,
        ))


SETTINGS: dict[str, Setting] = {
    "plain": Setting(),
    "flip": Setting(augmentation={"hflip": True, "max_shift": 0}),
    "flip-shift": Setting(augmentation={"hflip": True, "max_shift": 2}),
    "wide": Setting(channels=(32, 64, 128)),
    "double": Setting(convs_per_block=2),
    "residual": Setting(convs_per_block=2, residual=True),
    "double-deep": Setting(channels=(16, 32, 64, 128), convs_per_block=2),
    "wide-flip-shift-rotate": Setting(
        channels=(32, 64, 128), augmentation={"hflip": True, "max_shift": 2, "max_rotation": 10}
    ),
}


def load(path: Path) -> tuple[object, list[str], np.ndarray]:
    """The train + val cohort (malignant = 1), its stay ids and labels."""
    cohort = medmnist.build(path, split="all", positive_class=0)
    ids = [str(s) for s in cohort.stays["stay_id"]]
    splits = sorted(set(cohort.stays["split"]))
    if "test" in splits:
        raise SystemExit(f"{path} holds a test split; this benchmark must not see it. Pass a train/val-only copy.")
    y = CohortFeaturizer(modalities=("image",), label="label").fit(cohort, ids).transform(cohort, ids)["target"]
    return cohort, ids, y.astype(np.float64)


def featurize(cohort, train_ids: list[str], test_ids: list[str], size: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Image arrays normalised with statistics of ``train_ids`` only."""
    feat = CohortFeaturizer(modalities=("image",), label="label", transformers={"image": ImageTransformer(size=size)})
    feat.fit(cohort, train_ids)
    return feat.transform(cohort, train_ids), feat.transform(cohort, test_ids)


def cnn_predict(train: ArrayDataset, test: ArrayDataset, setting: Setting, seeds: list[int], tta: bool,
                epochs: int | None) -> np.ndarray:
    """Predicted risk on ``test``, ``[len(seeds), views, n]``: one model per seed, scored on the test images and,
    with ``tta``, also with the encoder's flip test-time augmentation on (``CNNEncoderConfig(tta="flip")``, the
    run config's ``model.image.tta``: the image feature averaged over the image and its left-right mirror)."""
    channels_in, size = train["image"].shape[1], train["image"].shape[-1]
    preds = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = setting.model(channels_in, size)
        trainer = setting.trainer(seed, epochs)
        trainer.fit(model, train)
        views = [trainer.predict(model, test)]
        if tta:
            encoder = model.encoders["image"]
            encoder.config = encoder.config.model_copy(update={"tta": "flip"})  # as a saved model with tta: flip
            views.append(trainer.predict(model, test))
        preds.append(views)
    return np.asarray(preds, dtype=np.float64)


def logistic_predict(train: ArrayDataset, test: ArrayDataset, seed: int) -> np.ndarray:
    """Reference: L2 logistic regression on the standardised raw pixels; C from 3-fold inner CV (AUROC)."""
    x_train, x_test = train["image"].reshape(len(train), -1), test["image"].reshape(len(test), -1)
    inner = StratifiedKFold(3, shuffle=True, random_state=seed)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf = GridSearchCV(pipe, {"logisticregression__C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]}, cv=inner, scoring="roc_auc")
    clf.fit(x_train, train["target"])
    return clf.predict_proba(x_test)[:, 1]


def select_setting(train: ArrayDataset, candidates: list[str], args) -> tuple[str, dict[str, float]]:
    """The candidate with the best pooled inner-CV AUROC on ``train`` (the outer fold's training part only).

    ``train`` is already normalised with statistics of the whole outer training part; the inner folds reuse that
    normalisation (one mean and one standard deviation, a negligible leak between inner folds)."""
    y = train["target"]
    inner = StratifiedKFold(args.inner_folds, shuffle=True, random_state=args.seed + 1)
    scores = {}
    for name in candidates:
        oof = np.zeros(len(train))
        for tr, va in inner.split(np.zeros(len(y)), y):
            preds = cnn_predict(train[tr], train[va], SETTINGS[name], [args.seed], args.tta, args.epochs)
            oof[va] = preds.mean(axis=(0, 1))
        scores[name] = auroc(y, oof)
        log.info("  inner CV %-18s AUROC %.4f", name, scores[name])
    best = max(candidates, key=lambda n: scores[n])  # first on ties
    return best, scores


def compare_runs(path_a: Path, path_b: Path, n_boot: int, seed: int) -> None:
    """Print the pooled CNN AUROC of two runs' ``oof.csv`` and a paired, stratified bootstrap 95% CI of B - A."""
    frames = []
    for path in (path_a, path_b):
        try:
            frames.append(pd.read_csv(path, dtype={"stay_id": str}))
        except (OSError, pd.errors.ParserError) as exc:
            raise SystemExit(
                f"cannot read {path} as CSV ({exc}); pass an oof.csv written by this script's --out."
            ) from exc
    a, b = frames
    for path, frame in ((path_a, a), (path_b, b)):
        missing = {"stay_id", "y", "cnn"} - set(frame.columns)
        if missing:
            raise SystemExit(f"{path} lacks column(s) {sorted(missing)}; pass an oof.csv written by this script's --out.")
    if not (a["stay_id"].equals(b["stay_id"]) and a["y"].equals(b["y"])):
        raise SystemExit(f"{path_a} and {path_b} hold other images or labels; compare runs on the same data.")
    y, p_a, p_b = a["y"].to_numpy(), a["cnn"].to_numpy(), b["cnn"].to_numpy()
    diffs = np.array([auroc(y[idx], p_b[idx]) - auroc(y[idx], p_a[idx])
                      for chunk in resample_indices(y, n_boot=n_boot, seed=seed) for idx in chunk])
    low, high = np.percentile(diffs, [2.5, 97.5])
    print(f"A {path_a}: AUROC {auroc(y, p_a):.4f}\nB {path_b}: AUROC {auroc(y, p_b):.4f}")
    print(f"B - A {auroc(y, p_b) - auroc(y, p_a):+.4f} (paired bootstrap 95% CI {low:+.4f} to {high:+.4f}, "
          f"{n_boot} resamples; share of resamples with B <= A: {np.mean(diffs <= 0):.3f}), n={len(y)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="breastmnist.npz (train + val only)")
    parser.add_argument("--folds", type=int, default=5, help="outer stratified CV folds")
    parser.add_argument("--seed", type=int, default=0, help="seeds the folds, the models and the bootstrap")
    parser.add_argument("--epochs", type=int, default=None, help="override the setting's number of epochs")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="plain")
    parser.add_argument("--ensemble", type=int, default=3, help="models (seeds seed..seed+N-1) averaged per fold")
    parser.add_argument("--tta", action="store_true", help="also score with the encoder's flip TTA (both reported)")
    parser.add_argument("--size", type=int, default=28, help="image side after resizing")
    parser.add_argument("--nested", action="store_true", help="choose the setting per fold by inner CV")
    parser.add_argument("--candidates", nargs="+", choices=sorted(SETTINGS), default=["plain", "double"])
    parser.add_argument("--inner-folds", type=int, default=3)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="folder for oof.csv and summary.json")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A_OOF", "B_OOF"), default=None,
                        help="only compare two earlier runs' oof.csv files (paired bootstrap of the AUROC difference)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    if args.compare is not None:
        compare_runs(*args.compare, n_boot=args.n_boot, seed=args.seed)
        return

    start = time.perf_counter()
    cohort, ids, y = load(args.data)
    seeds = list(range(args.seed, args.seed + args.ensemble))
    outer = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
    oof_cnn, oof_single, oof_plain = np.zeros(len(ids)), np.zeros(len(ids)), np.zeros(len(ids))
    oof_lr, fold_of = np.zeros(len(ids)), np.zeros(len(ids), dtype=np.int64)
    rows = []
    for k, (tr, te) in enumerate(outer.split(np.zeros(len(y)), y)):
        t0 = time.perf_counter()
        train, test = featurize(cohort, [ids[i] for i in tr], [ids[i] for i in te], args.size)
        chosen, inner_scores = args.setting, {}
        if args.nested:
            chosen, inner_scores = select_setting(train, args.candidates, args)
        preds = cnn_predict(train, test, SETTINGS[chosen], seeds, args.tta, args.epochs)
        oof_cnn[te], oof_single[te] = preds[:, -1].mean(axis=0), preds[0, 0]
        oof_plain[te] = preds[:, 0].mean(axis=0)
        oof_lr[te] = logistic_predict(train, test, args.seed)
        fold_of[te] = k
        rows.append({
            "fold": k, "n_train": len(tr), "n_test": len(te), "n_positive": int(y[te].sum()), "setting": chosen,
            "cnn_auroc": auroc(y[te], oof_cnn[te]), "one_model_auroc": auroc(y[te], oof_single[te]),
            "logreg_auroc": auroc(y[te], oof_lr[te]),
            "seconds": time.perf_counter() - t0, **{f"inner_{n}": s for n, s in inner_scores.items()},
        })
        log.info("fold %d: CNN (%s) %.4f, logistic regression %.4f (%.0f s)", k, chosen, rows[-1]["cnn_auroc"],
                 rows[-1]["logreg_auroc"], rows[-1]["seconds"])
    wall = time.perf_counter() - start

    per_fold = pd.DataFrame(rows).set_index("fold")
    cnn_name = "CNN (nested selection)" if args.nested else f"CNN ({args.setting})"
    combined = [f"ensemble of {args.ensemble}"] * (args.ensemble > 1) + ["flip TTA"] * args.tta
    if combined:
        cnn_name = f"{cnn_name[:-1]}, {' + '.join(combined)})"
    results = {cnn_name: (y, oof_cnn)}
    if args.tta:
        results[f"CNN ({args.setting if not args.nested else 'nested'}, ensemble of {args.ensemble}, no TTA)"] = \
            (y, oof_plain)
    if combined:
        results["CNN, one model of it (first seed, no TTA)"] = (y, oof_single)
    results["logistic regression, raw pixels"] = (y, oof_lr)
    table = comparison_table(results, threshold=0.5, n_boot=args.n_boot, seed=args.seed)
    ci = bootstrap_ci(auroc, y, oof_cnn, n_boot=args.n_boot, seed=args.seed)
    ratio_lr = table.loc[cnn_name, "auroc"] / table.loc["logistic regression, raw pixels", "auroc"]
    ratio_paper = table.loc[cnn_name, "auroc"] / RESNET18_28_TEST_AUROC

    pd.set_option("display.width", 200)
    print(f"BreastMNIST train+val: n={len(y)}, malignant={int(y.sum())}; {args.folds}-fold stratified CV, "
          f"seed {args.seed}; ensemble {args.ensemble}, TTA {'on' if args.tta else 'off'}")
    if not args.nested:
        print(f"setting {args.setting}: {json.dumps(asdict(SETTINGS[args.setting]))}"
              + (f", epochs overridden to {args.epochs}" if args.epochs else ""))
    print("\nPer fold (AUROC):")
    print(per_fold.round(4).to_string())
    print(f"\nMean per-fold CNN AUROC {per_fold['cnn_auroc'].mean():.4f} (sd {per_fold['cnn_auroc'].std():.4f})")
    print("\nPooled out-of-fold predictions (95% bootstrap CI; accuracy/precision/recall/F1 at 0.5):")
    print(format_comparison(table).to_string())
    print(f"\nCNN pooled AUROC {ci.value:.4f} (95% CI {ci.ci_low:.4f}-{ci.ci_high:.4f}, n={ci.n})")
    print(f"ratio CNN / logistic regression (same folds): {ratio_lr:.3f}")
    print(f"ratio CNN / MedMNIST v2 ResNet-18 (28) published test AUROC {RESNET18_28_TEST_AUROC}: {ratio_paper:.3f} "
          "(cited figure, other split)")
    print(f"wall time {wall:.0f} s")

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"stay_id": ids, "fold": fold_of, "y": y, "cnn": oof_cnn, "cnn_one_model": oof_single,
                      **({"cnn_no_tta": oof_plain} if args.tta else {}),
                      "logreg": oof_lr}).to_csv(
            args.out / "oof.csv", index=False)
        summary = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "per_fold": rows, "pooled": table.reset_index().to_dict(orient="records"),
            "cnn_auroc_ci": asdict(ci), "ratio_vs_logreg": ratio_lr, "ratio_vs_resnet18_paper": ratio_paper,
            "wall_seconds": wall,
        }
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
