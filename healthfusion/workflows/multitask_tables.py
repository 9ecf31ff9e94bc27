"""Tables of a ``healthfusion multitask`` run: per-task metrics with CIs, relative improvement over single-task models,
and the clustering report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthfusion.evaluation.bootstrap import seed_interval
from healthfusion.evaluation.calibration import calibration_with_ci
from healthfusion.evaluation.tim import (
    MAIN_METRIC,
    main_metric_ci,
    relative_improvement,
    task_metrics,
    valid_rows,
)
from healthfusion.models.multitask import MultitaskModel
from healthfusion.training.multitask import target_key


def task_table(per_seed: pd.DataFrame, kinds: dict, model: MultitaskModel, pred: dict, test, n_boot: int
               ) -> pd.DataFrame:
    """One row per task: main metric of the (first-seed) multitask model with a bootstrap 95% CI on the test
    stays, its mean over seeds, the single-task mean and the relative improvement with a t-interval over seeds. A
    binary task's row also has ``ece``, ``cal_slope`` and ``cal_intercept`` of the same model on the same stays,
    each with ``_ci_low``/``_ci_high`` from the same bootstrap resamples scheme (calibration beside AUROC)."""
    rows = []
    for i, task in enumerate(model.config.tasks):
        name = task.name
        metric, higher = MAIN_METRIC[task.kind]
        mt = per_seed[(per_seed["model"] == "multitask") & (per_seed["task"] == name)].sort_values("seed")
        row = {"task": name, "kind": task.kind, "metric": metric, "higher_is_better": higher,
               "n": int(mt["n"].iloc[0]), "self_weight": float(pred["self_weight"][pred["task_present"][:, i], i].mean())}
        row["multitask"] = float(mt["main"].iloc[0])
        if task.kind == "binary":  # the test events: what small-cell suppression judges the row by
            row["n_positive"] = int(mt["n_positive"].iloc[0])
        if task.kind != "clustering":
            present = pred["task_present"][:, i]
            ci = main_metric_ci(task.kind, test[target_key(name)][present], pred["predictions"][name][present],
                                n_boot=n_boot)
            row["multitask_ci_low"], row["multitask_ci_high"] = ci.ci_low, ci.ci_high
        if task.kind == "binary":
            present = pred["task_present"][:, i]
            y, p = np.asarray(test[target_key(name)][present]), np.asarray(pred["predictions"][name][present])
            labelled = valid_rows("binary", y)
            cal = calibration_with_ci(y[labelled], p[labelled], n_boot=n_boot).set_index("metric")
            for metric, values in cal.iterrows():
                row[metric], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = (
                    float(values["value"]), float(values["ci_low"]), float(values["ci_high"]))
        mean, lo, hi = seed_interval(mt["main"].tolist())
        row.update(multitask_mean=mean, multitask_seed_ci_low=lo, multitask_seed_ci_high=hi)
        st = per_seed[(per_seed["model"] == "single") & (per_seed["task"] == name)].sort_values("seed")
        if len(st):
            s_mean, s_lo, s_hi = seed_interval(st["main"].tolist())
            rel = [relative_improvement(a, b, higher) for a, b in zip(mt["main"], st["main"], strict=True)]
            r_mean, r_lo, r_hi = seed_interval(rel)
            row.update(single_mean=s_mean, single_seed_ci_low=s_lo, single_seed_ci_high=s_hi,
                       rel_improvement=r_mean, rel_ci_low=r_lo, rel_ci_high=r_hi,
                       worse_beyond_ci=bool(np.isfinite(r_hi) and r_hi < 0))
        rows.append(row)
    return pd.DataFrame(rows)


def improvement_summary(per_seed: pd.DataFrame, kinds: dict) -> dict:
    """Mean relative improvement over tasks per seed, with a t-interval over seeds (all tasks, and the supervised
    ones only); empty without single-task models."""
    if not (per_seed["model"] == "single").any():
        return {}
    out = {}
    for label, tasks in (("all_tasks", list(kinds)), ("supervised_tasks", [t for t, k in kinds.items()
                                                                           if k != "clustering"])):
        per = []
        for _seed, group in per_seed.groupby("seed"):
            vals = []
            for t in tasks:
                mt = group[(group["model"] == "multitask") & (group["task"] == t)]["main"]
                st = group[(group["model"] == "single") & (group["task"] == t)]["main"]
                if len(mt) and len(st):
                    vals.append(relative_improvement(float(mt.iloc[0]), float(st.iloc[0]), MAIN_METRIC[kinds[t]][1]))
            if vals:
                per.append(float(np.nanmean(vals)))
        mean, lo, hi = seed_interval(per)
        out[label] = {"mean": mean, "ci_low": lo, "ci_high": hi, "per_seed": per, "tasks": tasks}
    return out


def mean_frame(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    if not frames:
        return None
    return sum(frames) / len(frames)


def cluster_report(model: MultitaskModel, pred: dict, test, labels_kinds: dict) -> dict:
    """Size, silhouette and, per cluster, the mean of every binary/regression task's label (what the phenotype
    means clinically)."""
    out = {}
    for i, task in enumerate(model.config.tasks):
        if task.kind != "clustering":
            continue
        rows = pred["task_present"][:, i]
        assign = pred["predictions"][task.name][rows].argmax(axis=1)
        metrics = task_metrics("clustering", None, pred["predictions"][task.name][rows],
                               embedding=pred["representations"][rows, i])
        profile = {}
        for other, kind in labels_kinds.items():
            if kind not in ("binary", "regression"):
                continue
            y = test[target_key(other)][rows]
            profile[other] = [float(np.nanmean(y[assign == k])) if np.isfinite(y[assign == k]).any() else None
                              for k in range(task.n_outputs)]
        out[task.name] = {**metrics, "label_means_by_cluster": profile}
    return out
