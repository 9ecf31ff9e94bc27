"""``healthfusion evaluate``: metrics with bootstrap CIs, ROC/PR curves and one comparison table from a run
folder's ``predictions.csv`` (or any CSV with ``y_true`` and one probability column per model).

A run of a multiclass or regression label (its ``metrics.json`` names the label's kind) gets its own table
(:func:`evaluate_kind_predictions`): multiclass accuracy, macro-F1 and macro one-vs-rest AUROC; regression MAE,
RMSE and R², each with a percentile-bootstrap 95% CI. Its ``predictions.csv`` holds, per model, the predicted
class and one ``<model>:p_<class>`` probability column per class (multiclass) or the predicted value
(regression).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.evaluation.bootstrap import bootstrap_ci
from healthfusion.evaluation.compare import comparison_table, format_ci, format_comparison
from healthfusion.evaluation.metrics import multiclass_metrics, regression_metrics
from healthfusion.evaluation.plots import plot_pr, plot_roc
from healthfusion.files import write_csv
from healthfusion.workflows.runfolder import MANIFEST, check_artefacts, record_artefacts

NON_MODEL = ("stay_id", "split", "y_true")
#: metrics of the non-binary tables, in column order
KIND_METRICS: dict[str, tuple[str, ...]] = {"multiclass": ("accuracy", "f1_macro", "auroc_macro"),
                                            "regression": ("mae", "rmse", "r2")}
_METRIC_FN = {"multiclass": multiclass_metrics, "regression": regression_metrics}
PROBA_SEP = ":p_"  # multiclass probability columns of predictions.csv are "<model>:p_<class>"


def run_label(run_dir: str | Path) -> dict | None:
    """The label a run folder's model predicts, ``{"name", "kind", "classes"}``, from its ``metrics.json``
    (or, without one, its ``model/preprocessing.json``); None when neither says (an older binary run)."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").is_file():
        label = json.loads((run_dir / "metrics.json").read_text()).get("label")
        if isinstance(label, dict):
            return label
    prep = run_dir / "model" / "preprocessing.json"
    if prep.is_file():
        label = (json.loads(prep.read_text()).get("state") or {}).get("label")
        if isinstance(label, dict):
            return label
    return None


def _split_rows(run_dir: Path, split: str, y_type: type | None = None) -> pd.DataFrame:
    """The rows of ``split`` in ``run_dir/predictions.csv`` (all rows of a CSV without a split column).

    Raises
    ------
    ValueError
        No predictions.csv, or no rows of ``split`` (the splits present are named).
    """
    path = run_dir / "predictions.csv"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no predictions.csv; is it a run folder written by `healthfusion train`?")
    frame = pd.read_csv(path, dtype={"stay_id": str, **({"y_true": y_type} if y_type is not None else {})})
    rows = frame[frame["split"] == split] if "split" in frame.columns else frame
    if rows.empty:
        raise ValueError(f"{path} has no rows of split {split!r}; splits present: {sorted(frame['split'].unique())}.")
    return rows


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

    In a run folder with ``artefacts.json`` the predictions and metrics must be the run's own
    (:func:`~healthfusion.workflows.runfolder.check_artefacts`); the files written are recorded as artefacts of its
    model.

    Raises
    ------
    ValueError
        If the folder has no predictions, or no rows of ``split``; RunFolderError if its predictions or metrics
        belong to another model or were changed after the run wrote them.
    """
    run_dir = Path(run_dir)
    check_artefacts(run_dir, ("predictions.csv", "metrics.json"))
    label = run_label(run_dir)
    if label is not None and label.get("kind", "binary") != "binary":
        return evaluate_kind_predictions(run_dir, label, split=split, n_boot=n_boot, seed=seed)
    rows = _split_rows(run_dir, split)
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
    write_csv(table, run_dir / "comparison.csv")
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
        write_csv(op_table, run_dir / "comparison_operating_point.csv")
        summary["operating_points"] = operating_points
        summary["comparison_operating_point"] = json.loads(op_table.to_json(orient="index"))
    plot_roc(results, run_dir / "roc.png")
    plot_pr(results, run_dir / "pr.png")
    _record_if_recorded(run_dir, ("comparison.csv", "comparison_operating_point.csv", "roc.png", "pr.png"))
    return summary


def _record_if_recorded(run_dir: Path, names: tuple[str, ...]) -> None:
    """Record ``names`` as artefacts of the folder's model when the folder keeps a record (a finished run);
    during a run, the run records everything at its end."""
    if (run_dir / MANIFEST).is_file():
        record_artefacts(run_dir, names)


def kind_comparison_table(kind: str, results: Mapping[str, tuple[np.ndarray, np.ndarray]], n_boot: int = 1000,
                          seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """One row per model with each of :data:`KIND_METRICS` ``[kind]``, its percentile-bootstrap interval and ``n``.

    ``results`` maps model names to ``(y_true, y_pred)``: multiclass ``y_true`` ``[n]`` class indices and
    ``y_pred`` ``[n, K]`` probabilities (resampled within each class); regression ``y_true`` and ``y_pred``
    ``[n]`` values (plain resampling). Every model with the same ``y_true`` gets the same resamples.

    Raises
    ------
    ValueError
        An unknown ``kind`` or bad input for a model (the message names the model).
    """
    if kind not in KIND_METRICS:
        raise ValueError(f"No comparison table for label kind {kind!r}; expected one of {list(KIND_METRICS)}.")
    fn = _METRIC_FN[kind]
    quiet = logging.getLogger("healthfusion.evaluation")  # a class absent from a resample: warned once, below
    rows = []
    for name, (y, pred) in results.items():
        try:
            point = fn(y, pred)
        except ValueError as err:
            raise ValueError(f"Model {name!r}: {err}") from err
        row = {"model": name, "n": int(point["n"])}
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            for metric in KIND_METRICS[kind]:
                ci = bootstrap_ci(lambda a, b, metric=metric: fn(a, b)[metric], y, pred, n_boot=n_boot, alpha=alpha,
                                  seed=seed, stratified=kind == "multiclass")
                row.update({metric: point[metric], f"{metric}_ci_low": ci.ci_low, f"{metric}_ci_high": ci.ci_high})
        finally:
            quiet.setLevel(level)
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def kind_results(rows: pd.DataFrame, label: dict) -> tuple[dict, dict]:
    """``{model: (y_true, y_pred)}`` over each model's scored rows of a non-binary ``predictions.csv`` frame, and
    ``{model: number of rows without a score}`` (models that left some out)."""
    kind, classes = label["kind"], list(label.get("classes") or [])
    if kind == "multiclass":
        y = pd.Index(classes).get_indexer(rows["y_true"].astype(str))
        if (y < 0).any():
            raise ValueError(f"predictions.csv has y_true value(s) {sorted(set(rows['y_true'][y < 0].astype(str)))} "
                             f"that are not classes of label {label['name']!r} ({classes}).")
        models = [c for c in rows.columns if c not in NON_MODEL and PROBA_SEP not in c]
    else:
        y = rows["y_true"].to_numpy(dtype=float)
        models = [c for c in rows.columns if c not in NON_MODEL]
    results, skipped = {}, {}
    for name in models:
        if kind == "multiclass":
            cols = [f"{name}{PROBA_SEP}{c}" for c in classes]
            missing = [c for c in cols if c not in rows.columns]
            if missing:
                raise ValueError(f"predictions.csv lacks the probability column(s) {missing} of model {name!r}.")
            pred = rows[cols].to_numpy(dtype=float)
            ok = ~np.isnan(pred).any(axis=1)
        else:
            pred = rows[name].to_numpy(dtype=float)
            ok = ~np.isnan(pred)
        if (~ok).any():
            skipped[name] = int((~ok).sum())
        results[name] = (y[ok], pred[ok])
    return results, skipped


def evaluate_kind_predictions(run_dir: str | Path, label: dict, split: str = "test", n_boot: int = 1000,
                              seed: int = 0) -> dict:
    """Evaluate every model of a multiclass or regression run's ``predictions.csv`` on ``split``; write
    ``comparison.csv`` (:func:`kind_comparison_table`) and return a JSON-able summary (``label``, ``split``,
    ``n``, ``models_without_score``, ``comparison`` and, for multiclass, ``class_counts``).

    Raises
    ------
    ValueError
        No predictions, no rows of ``split``, or columns that do not match the label.
    """
    run_dir = Path(run_dir)
    check_artefacts(run_dir, ("predictions.csv", "metrics.json"))
    rows = _split_rows(run_dir, split, y_type=str if label["kind"] == "multiclass" else float)
    results, skipped = kind_results(rows, label)
    table = kind_comparison_table(label["kind"], results, n_boot=n_boot, seed=seed)
    write_csv(table, run_dir / "comparison.csv")
    _record_if_recorded(run_dir, ("comparison.csv",))
    summary = {"label": label, "split": split, "n": int(len(rows)), "models_without_score": skipped,
               "comparison": json.loads(table.to_json(orient="index"))}
    if label["kind"] == "multiclass":
        summary["class_counts"] = {str(k): int(v) for k, v in rows["y_true"].value_counts().items()}
    return summary


def display_comparison(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A run's ``comparison.csv`` as strings to print, one row per metric and one column per model
    (``"value (low-high)"``), and its title; binary tables as :func:`format_comparison` formats them."""
    kind = next((k for k, names in KIND_METRICS.items() if set(names) <= set(table.columns)), None)
    if kind is None:
        return (format_comparison(table).T.rename_axis("metric").reset_index(),
                "Test-set metrics at threshold 0.5 (95% bootstrap CI)")
    out = pd.DataFrame(index=table.index)
    out["n"] = table["n"].astype(int)
    for m in KIND_METRICS[kind]:
        out[m] = [format_ci(v, lo, hi) for v, lo, hi in table[[m, f"{m}_ci_low", f"{m}_ci_high"]].to_numpy()]
    return out.T.rename_axis("metric").reset_index(), f"Test-set metrics, {kind} label (95% bootstrap CI)"
