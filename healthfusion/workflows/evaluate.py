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
from healthfusion.evaluation.challenge2012 import challenge_scores_with_ci
from healthfusion.evaluation.compare import comparison_table, difference_table, format_ci, format_comparison
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
RUN_MODELS = ("hybrid", "ensemble")  # the run's own models; every other column is a baseline or reference score


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
    frame = _read_predictions(path, y_type)
    rows = frame[frame["split"] == split] if "split" in frame.columns else frame
    if rows.empty:
        raise ValueError(f"{path} has no rows of split {split!r}; splits present: {sorted(frame['split'].unique())}.")
    return rows


def _read_predictions(path: Path, y_type: type | None) -> pd.DataFrame:
    """``predictions.csv`` checked for damage: raises ValueError naming the file (and line) when it is empty,
    truncated (no final newline, a row with fewer fields), lacks ``y_true``, or has a label or binary probability
    that is missing, not a number or out of range."""
    hint = "the file is truncated or was edited; restore it or re-run `healthfusion train`"
    try:
        raw = path.read_bytes()
        frame = pd.read_csv(path, dtype={"stay_id": str, **({"y_true": y_type} if y_type is not None else {})})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise ValueError(f"{path} cannot be read ({str(err).splitlines()[0]}); {hint}.") from None
    if not raw.endswith(b"\n"):
        line = raw.count(b"\n") + 1
        raise ValueError(f"{path} ends in the middle of line {line}; {hint}.")
    if "y_true" not in frame.columns:
        raise ValueError(f"{path} has no y_true column (columns: {list(frame.columns)}); {hint}.")
    short = frame.index[frame.isna().all(axis=1) | frame["y_true"].isna()]
    if len(short):
        raise ValueError(f"{path} line {int(short[0]) + 2} has no y_true; {hint}.")
    if y_type is None:  # a binary run: labels 0/1, one probability column per model
        y = pd.to_numeric(frame["y_true"], errors="coerce")
        bad = frame.index[~y.isin([0, 1])]
        if len(bad):
            raise ValueError(f"{path} line {int(bad[0]) + 2}: y_true {frame['y_true'].iloc[bad[0]]!r} is not 0 or 1; "
                             f"{hint}.")
        for col in [c for c in frame.columns if c not in NON_MODEL]:
            p = pd.to_numeric(frame[col], errors="coerce")
            bad = frame.index[(p.isna() & frame[col].notna()) | (p < 0) | (p > 1)]
            if len(bad):
                raise ValueError(f"{path} line {int(bad[0]) + 2}: {col} {frame[col].iloc[bad[0]]!r} is not a "
                                 f"probability; {hint}.")
    return frame


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
    differences = _differences(rows, table, n_boot, seed)
    stale = run_dir / "comparison_difference.csv"
    if differences is not None:
        write_csv(differences, stale)
    elif stale.is_file():
        stale.unlink()
    summary = {
        "split": split,
        "n": int(len(rows)),
        "prevalence": float(np.mean(rows["y_true"])),
        "threshold": threshold,
        "models_without_score": skipped,
        "comparison": json.loads(table.to_json(orient="index")),
    }
    if differences is not None:
        summary["difference_vs_best_baseline"] = json.loads(differences.to_json(orient="index"))
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
def _differences(rows: pd.DataFrame, table: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame | None:
    """Paired bootstrap CIs of every other model's AUROC/AUPRC minus the best baseline's (highest test AUROC among
    the columns that are not the run's own models); None without a baseline or another model."""
    baselines = [m for m in table.index if m not in RUN_MODELS and not np.isnan(table.loc[m, "auroc"])]
    if not baselines or len(table.index) < 2:
        return None
    best = max(baselines, key=lambda m: table.loc[m, "auroc"])
    frame = rows.assign(y_true=pd.to_numeric(rows["y_true"]))
    return difference_table(frame, [m for m in table.index if m != best], best, n_boot=n_boot, seed=seed)


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


def display_differences(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A run's ``comparison_difference.csv`` as strings to print (one row per model, ``"value (low to high)"``)
    and its title."""
    reference = str(table["reference"].iloc[0]) if len(table) else ""
    out = pd.DataFrame(index=table.index)
    out["n"] = table["n"].astype(int)
    for m in ("auroc", "auprc"):
        out[f"{m} difference"] = [format_ci(v, lo, hi) for v, lo, hi in
                                  table[[f"{m}_diff", f"{m}_diff_ci_low", f"{m}_diff_ci_high"]].to_numpy()]
    return out.reset_index(), f"Difference from the best baseline ({reference}), paired bootstrap 95% CI"



def display_challenge(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A run's ``challenge2012.csv`` (model as index) as strings to print, one row per model: n (deaths), the
    threshold, sensitivity, PPV, event 1 and event 2 H as ``"value (low-high)"``; and its title. A table written
    before the intervals existed shows the values alone."""
    out = pd.DataFrame(index=table.index)
    if "n_positive" in table.columns:
        out["n (deaths)"] = [f"{int(n)} ({int(k)})" for n, k in zip(table["n"], table["n_positive"], strict=True)]
    else:  # written before the intervals existed
        out["n"] = table["n"].astype(int)
    out["threshold"] = table["threshold"].map(lambda v: f"{v:.3f}")
    out["sensitivity"] = table["sensitivity"].map(lambda v: f"{v:.3f}")
    out["ppv"] = table["ppv"].map(lambda v: f"{v:.3f}")
    for m, digits in (("event1", 3), ("event2_h", 1)):
        if f"{m}_ci_low" in table.columns:
            out[m] = [format_ci(v, lo, hi, digits=digits) for v, lo, hi in
                      table[[m, f"{m}_ci_low", f"{m}_ci_high"]].to_numpy(dtype=float)]
        else:
            out[m] = table[m].map(lambda v, d=digits: f"{v:.{d}f}")
    boot = f", 95% bootstrap CI over {int(table['n_boot'].iloc[0])} resamples" if "n_boot" in table.columns and \
        len(table) else ""
    return (out.reset_index(), "PhysioNet Challenge 2012 scores (event 1 higher, event 2 H lower is better"
                               f"{boot})")


def evaluate_test_sets(run_dir: str | Path, test_sets: Mapping[str, list[str]], threshold: float = 0.5,
                       n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every model of a binary run's ``predictions.csv`` on each external test set of ``test_sets`` (name -> its
    stay ids, a run config's ``data.test`` list) separately; writes ``comparison_by_test_set.csv`` (one row per test
    set and model: the :func:`comparison_table` columns) and returns it, indexed by ``(test_set, model)``.

    Raises
    ------
    ValueError
        No test rows, or a test set none of whose stays was scored (its name is given).
    """
    run_dir = Path(run_dir)
    rows = _split_rows(run_dir, "test")
    models = [c for c in rows.columns if c not in NON_MODEL]
    tables = []
    for name, stay_ids in test_sets.items():
        part = rows[rows["stay_id"].isin([str(s) for s in stay_ids])]
        if part.empty:
            raise ValueError(f"test set {name!r} has no labelled, scored stays in {run_dir / 'predictions.csv'}.")
        results = {m: (part["y_true"].to_numpy()[part[m].notna().to_numpy()], part[m].dropna().to_numpy())
                   for m in models}
        table = comparison_table(results, threshold=threshold, n_boot=n_boot, seed=seed)
        tables.append(table.reset_index().assign(test_set=name))
    out = pd.concat(tables, ignore_index=True).set_index(["test_set", "model"])
    write_csv(out, run_dir / "comparison_by_test_set.csv")
    _record_if_recorded(run_dir, ("comparison_by_test_set.csv",))
    return out


CHALLENGE_COLUMNS = ["model", "n", "n_positive", "threshold", "sensitivity", "ppv", "event1", "event1_ci_low",
                     "event1_ci_high", "event2_h", "event2_h_ci_low", "event2_h_ci_high", "n_event2", "n_boot"]


def challenge_scores(run_dir: str | Path, split: str, operating_points: Mapping[str, float], n_boot: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """The PhysioNet Challenge 2012 scores (:mod:`healthfusion.evaluation.challenge2012`) of every model of a
    binary run's ``predictions.csv`` on ``split``: event 1 at the model's operating point chosen on the validation
    stays (models without one are left out), event 2 (the H statistic) of its risks, each with a 95% bootstrap
    interval over ``n_boot`` resamples of the stays stratified by outcome (``seed``; the same resamples for every
    model scored on the same stays); writes ``challenge2012.csv`` (one row per model, columns
    :data:`CHALLENGE_COLUMNS`) and returns it.

    Raises
    ------
    ValueError
        No rows of ``split``.
    """
    run_dir = Path(run_dir)
    rows = _split_rows(run_dir, split)
    records = []
    for model, threshold in operating_points.items():
        if model not in rows.columns:
            continue
        part = rows[rows[model].notna()]
        y, p = part["y_true"].to_numpy(dtype=float), part[model].to_numpy(dtype=float)
        records.append({"model": model, **challenge_scores_with_ci(y, p, threshold, n_boot=n_boot, seed=seed)})
    table = pd.DataFrame(records, columns=CHALLENGE_COLUMNS).set_index("model")
    write_csv(table, run_dir / "challenge2012.csv")
    _record_if_recorded(run_dir, ("challenge2012.csv",))
    return table
