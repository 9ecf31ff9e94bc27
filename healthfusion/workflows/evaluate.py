"""``healthfusion evaluate``: metrics with bootstrap CIs, ROC/PR curves and one comparison table from a run
folder's ``predictions.csv`` (or any CSV with ``y_true`` and one probability column per model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.evaluation.compare import comparison_table
from healthfusion.evaluation.plots import plot_pr, plot_roc

NON_MODEL = ("stay_id", "split", "y_true")


def evaluate_predictions(
    run_dir: str | Path,
    split: str = "test",
    threshold: float = 0.5,
    operating_points: dict[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Evaluate every model column of ``run_dir/predictions.csv`` on ``split``; write ``comparison.csv``,
    ``comparison_operating_point.csv`` (when ``operating_points`` are given, or read from a previous
    ``metrics.json``), ``roc.png`` and ``pr.png``; return a JSON-able summary.

    Raises
    ------
    ValueError
        If the folder has no predictions, or no rows of ``split``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "predictions.csv"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no predictions.csv; is it a run folder written by `healthfusion train`?")
    frame = pd.read_csv(path, dtype={"stay_id": str})
    rows = frame[frame["split"] == split] if "split" in frame.columns else frame
    if rows.empty:
        raise ValueError(f"{path} has no rows of split {split!r}; splits present: {sorted(frame['split'].unique())}.")
    if operating_points is None and (run_dir / "metrics.json").is_file():
        operating_points = json.loads((run_dir / "metrics.json").read_text()).get("operating_points")
    models = [c for c in rows.columns if c not in NON_MODEL]
    results, skipped = {}, {}
    for name in models:
        ok = rows[name].notna().to_numpy()
        if (~ok).any():
            skipped[name] = int((~ok).sum())
        results[name] = (rows["y_true"].to_numpy()[ok], rows[name].to_numpy()[ok])
    table = comparison_table(results, threshold=threshold, n_boot=n_boot, seed=seed)
    table.to_csv(run_dir / "comparison.csv")
    summary = {
        "split": split,
        "n": int(len(rows)),
        "prevalence": float(np.mean(rows["y_true"])),
        "threshold": threshold,
        "models_without_score": skipped,
        "comparison": json.loads(table.to_json(orient="index")),
    }
    if operating_points:
        op_table = comparison_table(results, threshold={m: operating_points.get(m, threshold) for m in results},
                                    n_boot=n_boot, seed=seed)
        op_table.to_csv(run_dir / "comparison_operating_point.csv")
        summary["operating_points"] = operating_points
        summary["comparison_operating_point"] = json.loads(op_table.to_json(orient="index"))
    plot_roc(results, run_dir / "roc.png")
    plot_pr(results, run_dir / "pr.png")
    return summary
