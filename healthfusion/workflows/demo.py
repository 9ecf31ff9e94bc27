"""``healthfusion demo``: the whole pipeline on the embedded synthetic cohort, end to end.

Steps: generate the cohort -> patient-level split (stratified by mortality) -> fit features on the training stays
-> train the fused LSTM + CNN + tabular model (concatenation fusion, FC head, early stopping on validation AUROC)
-> train a logistic-regression baseline on engineered features of the same split -> test-set metrics with bootstrap
CIs, ROC curves, ``metrics.json`` and the saved model in the run folder.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from healthfusion.data import synthetic
from healthfusion.data.cohort import Cohort
from healthfusion.data.splits import split_patients
from healthfusion.evaluation.compare import comparison_table, format_comparison
from healthfusion.evaluation.plots import plot_pr, plot_roc
from healthfusion.features.compose import CohortFeaturizer, engineered_features
from healthfusion.models.classical import make_baseline
from healthfusion.models.hybrid import HybridModel
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.callbacks import ProgressCallback
from healthfusion.workflows.modeling import hybrid_config

log = logging.getLogger(__name__)

LABEL = "mortality"
MODALITIES = ("ts", "static", "image")


class _Steps:
    """Numbered step lines on the console with their wall time."""

    def __init__(self, console, total: int):
        self.console, self.total, self.i = console, total, 0

    def __call__(self, text: str):
        self.i += 1
        if self.console is not None:
            self.console.print(f"[bold cyan][{self.i}/{self.total}][/] {text}")
        return time.perf_counter()

    def done(self, start: float, detail: str = ""):
        if self.console is not None:
            self.console.print(f"      done in {time.perf_counter() - start:.1f} s {detail}")


def run_demo(
    out: Path | None = None,
    n_stays: int = 2000,
    seed: int = 0,
    max_epochs: int = 30,
    console=None,
) -> dict:
    """Run the demo and return ``{"run_dir", "table" (formatted DataFrame), "metrics" (raw), "seconds"}``.

    Raises
    ------
    ValueError
        If ``n_stays`` is too small to split (fewer than about 50 stays).
    """
    if n_stays < 50:
        raise ValueError(f"The demo needs at least 50 stays to split into train/validation/test; got {n_stays}.")
    t0 = time.perf_counter()
    run_dir = Path(out) if out else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    step = _Steps(console, 6)

    s = step(f"Generating the synthetic cohort ({n_stays} stays, seed {seed})")
    cohort = Cohort.load(synthetic.write(run_dir / "cohort", n_stays=n_stays, seed=seed))
    step.done(s, f"-> {run_dir / 'cohort'}")

    s = step("Splitting patients 70/15/15, stratified by mortality")
    split = split_patients(cohort.stays, seed=seed, stratify=cohort.label(LABEL))
    ids = {name: split.index[split == name].tolist() for name in ("train", "val", "test")}
    step.done(s, "(" + ", ".join(f"{k} {len(v)}" for k, v in ids.items()) + " stays)")

    s = step("Fitting features on the training stays (time series, static, images)")
    feat = CohortFeaturizer(modalities=MODALITIES, label=LABEL).fit(cohort, ids["train"])
    data = {name: feat.transform(cohort, v) for name, v in ids.items()}
    step.done(s, f"({feat.input_dims()})")

    s = step("Training the fused LSTM + CNN + tabular model")
    model = HybridModel(hybrid_config(feat, fusion="concat", hidden=32))
    callbacks = [ProgressCallback(console=console)] if console is not None else []
    trainer = Trainer(TrainerConfig(max_epochs=max_epochs, batch_size=64, lr=2e-3, weight_decay=1e-4, patience=6,
                                    imbalance="class_weight", seed=seed), callbacks=callbacks)
    history = trainer.fit(model, data["train"], data["val"], head_kind="binary")
    p_hybrid = trainer.predict(model, data["test"])
    model.save_pretrained(run_dir / "model", preprocessing_state=feat.get_state())
    step.done(s, f"(best epoch {history.best_epoch + 1} of {len(history.train_loss)})")

    s = step("Training the logistic-regression baseline on engineered features")
    x = {name: engineered_features(cohort, feat, v) for name, v in ids.items()}
    y = {name: data[name]["target"] for name in ids}
    baseline = make_baseline("logistic_regression", seed=seed).fit(x["train"], y["train"])
    p_lr = baseline.predict_proba(x["test"])[:, 1]
    step.done(s)

    s = step("Evaluating on the test stays")
    results = {"hybrid (LSTM+CNN+tabular)": (y["test"], p_hybrid), "logistic regression": (y["test"], p_lr)}
    table = comparison_table(results, threshold=0.5, n_boot=500, seed=seed)
    plot_roc(results, run_dir / "roc.png")
    plot_pr(results, run_dir / "pr.png")
    metrics = {
        "label": LABEL,
        "n_test": int(len(ids["test"])),
        "prevalence_test": float(np.mean(y["test"])),
        "models": json.loads(table.to_json(orient="index")),
        "history": {"best_epoch": history.best_epoch, "val_metric": list(map(float, history.val_metric))},
        "seed": seed,
        "n_stays": n_stays,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    step.done(s, f"-> {run_dir / 'metrics.json'}, roc.png, pr.png")
    formatted = format_comparison(table).T.rename_axis("metric").reset_index()
    return {"run_dir": run_dir, "table": formatted, "metrics": metrics,
            "seconds": time.perf_counter() - t0}
