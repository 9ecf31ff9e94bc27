"""``healthfusion demo``: the whole pipeline on the embedded synthetic cohort, end to end.

It generates the cohort into the run folder, then runs the same training job as ``healthfusion train``: a
patient-level split stratified by mortality, features fitted on the training stays, the fused LSTM + CNN + tabular
model (concatenation fusion, FC head, early stopping on validation AUROC, class weights) and a logistic-regression
baseline on engineered features of the same split, evaluated on the test stays with bootstrap CIs, ROC/PR curves,
``metrics.json``, the saved model, explanations, the calibration/subgroup/impact audit and ``report.html``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from healthfusion.data import synthetic
from healthfusion.evaluation.compare import format_comparison
from healthfusion.files import display_path
from healthfusion.workflows.config import DataSpec, EvaluationSpec, FeatureSpec, ModelSpec, RunConfig
from healthfusion.workflows.report import build_report
from healthfusion.workflows.runfolder import claim_run_folder
from healthfusion.workflows.train import run_training

LABEL = "mortality"


def demo_config(run_dir: Path, seed: int = 0, max_epochs: int = 30) -> RunConfig:
    """The demo's run configuration (the same schema as ``healthfusion train --config``)."""
    return RunConfig(
        name="demo",
        out=run_dir,
        data=DataSpec(cohort=run_dir / "cohort", label=LABEL, split={"seed": seed}),
        features=FeatureSpec(modalities=["ts", "static", "image"]),
        model=ModelSpec(fusion="concat", hidden=32, dropout=0.1),
        training={"max_epochs": max_epochs, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "patience": 6,
                  "imbalance": "class_weight", "seed": seed},
        baselines=["logistic_regression"],
        evaluation=EvaluationSpec(n_boot=500),
    )


def run_demo(out: Path | None = None, n_stays: int = 2000, seed: int = 0, max_epochs: int = 30,
             console=None, overwrite: bool = False) -> dict:
    """Run the demo; return ``{"run_dir", "report" (the HTML file), "table" (metric x model strings), "metrics"
    (raw), "seconds"}``.

    The run folder must be new or empty unless ``overwrite`` (which clears it first).

    Raises
    ------
    ValueError
        If ``n_stays`` is too small to split (fewer than 50 stays); RunFolderError if ``out`` is not empty and
        ``overwrite`` is False.
    """
    if n_stays < 50:
        raise ValueError(f"The demo needs at least 50 stays to split into train/validation/test; got {n_stays}.")
    t0 = time.perf_counter()
    run_dir = Path(out) if out else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    claim_run_folder(run_dir, overwrite)
    if console is not None:
        console.print(f"[bold cyan]Synthetic cohort[/] {n_stays} stays, seed {seed} -> "
                      f"{display_path(run_dir / 'cohort')}")
        with console.status("Generating ..."):
            synthetic.write(run_dir / "cohort", n_stays=n_stays, seed=seed)
    else:
        synthetic.write(run_dir / "cohort", n_stays=n_stays, seed=seed)
    run_training(demo_config(run_dir, seed=seed, max_epochs=max_epochs), console=console)
    report = build_report(run_dir)
    if console is not None:
        console.print(f"[bold cyan]Report[/] {report}")
    table = pd.read_csv(run_dir / "comparison.csv", index_col=0)
    return {
        "run_dir": run_dir,
        "report": report,
        "table": format_comparison(table).T.rename_axis("metric").reset_index(),
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "seconds": time.perf_counter() - t0,
    }
