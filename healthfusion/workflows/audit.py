"""Audit artefacts of a run folder: explanations of the hybrid model and the calibration, subgroup and impact audit.

``write_explanations`` (needs the model and feature arrays; ``healthfusion train`` calls it, ``healthfusion
explain RUN_DIR`` recomputes it) writes ``explanations/``:

* ``global_importance.csv`` / ``importance.png``: mean |GradientShap attribution| per variable and static feature
* ``importance_by_window.csv``: the same per time window of the series
* ``top_features.csv``: each explained test stay's five strongest contributors, signed (with its stay id, for
  internal use: the report shows a row number instead unless asked for identifiers)
* ``attention.png``: the highest-risk explained stay's series with the LSTM attention over time (figures name
  no stay)
* ``modality_contributions.csv`` / ``modalities.png``: Shapley values over modalities (fused models)
* ``saliency.png``: gradient and Grad-CAM maps over test images (image models)
* ``summary.json``: method, sample sizes, variables

``write_audit`` (needs only ``predictions.csv`` and ``domains.csv``) writes ``audit/``: ``calibration.csv``
(ECE, Brier, slope, intercept with CIs, before and after recalibration fitted on the validation stays),
``reliability.png``, ``subgroups.csv``, ``fairness_gaps.csv``, ``mitigation.csv``, ``subgroups.png``,
``decision_curve.png``, ``what_if.json`` and ``audit.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from healthfusion.data.schema import DOMAIN_COLUMNS
from healthfusion.evaluation.audit_plots import (
    plot_attention,
    plot_decision_curve,
    plot_importance,
    plot_reliability,
    plot_saliency,
    plot_subgroups,
)
from healthfusion.evaluation.calibration import calibration_summary
from healthfusion.evaluation.disclosure import comparable, is_small, suppress_groups
from healthfusion.evaluation.explain import attribute_timeseries, model_forward
from healthfusion.evaluation.explain_multimodal import (
    attention_over_time,
    image_saliency,
    modality_contributions,
)
from healthfusion.evaluation.fairness import fairness_gaps, group_metrics, group_thresholds
from healthfusion.evaluation.impact import what_if
from healthfusion.features import batch as B
from healthfusion.files import write_csv, write_text
from healthfusion.models.calibration import Calibrator

log = logging.getLogger(__name__)
HYBRID = "hybrid"
DEFAULT_WHAT_IF = {"effectiveness": 0.3, "intervention_cost": 500.0, "event_cost": 15000.0}


def domain_table(stays: dict[str, pd.DataFrame], ids: dict[str, list[str]]) -> pd.DataFrame:
    """``stay_id``, ``split`` and the domain columns (site, care unit, age group, sex, ethnicity) the stays have."""
    parts = []
    for split, stay_ids in ids.items():
        table = stays[split].set_index("stay_id")
        cols = [c for c in DOMAIN_COLUMNS if c in table.columns]
        parts.append(table.reindex([str(s) for s in stay_ids])[cols].rename_axis("stay_id").reset_index()
                     .assign(split=split))
    return pd.concat(parts, ignore_index=True)


def _static_names(featurizer) -> list[str]:
    t = featurizer.transformers_
    names = list(t["static"].feature_names_) if "static" in t else []
    if "summary" in t:
        names += list(t["summary"].feature_names_)
    return names


def write_explanations(run_dir: str | Path, model, featurizer, background, data, stay_ids, *,
                       n_explain: int = 48, n_background: int = 32, n_samples: int = 16, seed: int = 0) -> dict:
    """Explain ``model`` on up to ``n_explain`` stays of ``data`` (an ArrayDataset of test stays with a modality
    present, ``stay_ids`` naming its rows) against ``n_background`` stays of ``background`` (training stays).

    Returns the summary written to ``explanations/summary.json``.
    """
    out = Path(run_dir) / "explanations"
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(data), size=min(n_explain, len(data)), replace=False))
    bg_pick = np.sort(rng.choice(len(background), size=min(n_background, len(background)), replace=False))
    x, bg = data[pick].without(B.TARGET), background[bg_pick].without(B.TARGET)
    ids = [str(stay_ids[i]) for i in pick]
    batch = x.batch()
    with torch.no_grad():
        risk = torch.sigmoid(model(batch)["logits"].reshape(-1)).numpy()
    summary: dict = {"n_explained": len(pick), "n_background": len(bg_pick), "method": "gradient_shap",
                     "n_samples": n_samples, "files": []}
    t = featurizer.transformers_
    if "ts" in t:
        static = "static" in t
        result = attribute_timeseries(model_forward(model), x, background=bg, variables=t["ts"].variables_,
                                      method="gradient_shap", n_samples=n_samples, include_static=static,
                                      static_names=_static_names(featurizer) if static else None, seed=seed,
                                      sample_ids=ids, step_hours=t["ts"].step)
        importance = result.global_importance()
        write_csv(importance.rename_axis("feature"), out / "global_importance.csv")
        write_csv(result.top_features(5).rename(columns={"sample": "stay_id"}), out / "top_features.csv", index=False)
        window = max(t["ts"].step, t["ts"].hours / 6)
        write_csv(result.per_window(window), out / "importance_by_window.csv")
        plot_importance(importance, out / "importance.png",
                        title="What drives the predicted risk (GradientShap, mean |attribution|)")
        summary.update(variables=list(t["ts"].variables_), expected_logit=result.expected_value,
                       top_features=importance.head(10).round(5).to_dict())
        summary["files"] += ["global_importance.csv", "top_features.csv", "importance_by_window.csv", "importance.png"]
        try:
            attention = attention_over_time(model, batch)
        except ValueError:
            attention = None
        if attention is not None and attention.any():
            i = int(np.argmax(risk))
            top_vars = [v for v in importance.index if v in t["ts"].variables_][:5]
            cols = [t["ts"].variables_.index(v) for v in top_vars]
            plot_attention(batch[B.TS_VALUES][i, :, cols].numpy(), attention[i], top_vars, out / "attention.png",
                           step_hours=t["ts"].step, mask=batch[B.TS_MASK][i, :, cols].numpy(),
                           title=f"Highest-risk explained stay (predicted risk {risk[i]:.2f}): top variables and attention")
            summary["attention_stay"] = ids[i]
            summary["files"].append("attention.png")
    mods = list(getattr(model, "modalities", ()))
    if len(mods) > 1:
        shapley = modality_contributions(model, batch, method="shapley")
        shapley.insert(0, "stay_id", ids)
        write_csv(shapley, out / "modality_contributions.csv", index=False)
        plot_importance(shapley[mods].abs().mean(), out / "modalities.png", title="Modality contributions "
                        "(Shapley over modalities, mean |logit share|)", xlabel="mean |contribution| (logit)")
        summary["modality_contributions"] = shapley[mods].abs().mean().round(5).to_dict()
        summary["files"] += ["modality_contributions.csv", "modalities.png"]
    if B.IMAGE in batch:
        present = batch.get(B.present_key("image"), torch.ones(len(ids), dtype=torch.bool)).numpy()
        rows = np.flatnonzero(present)[:4]
        if rows.size:
            sub = {k: v[rows] for k, v in batch.items()}
            maps = {"gradient": image_saliency(model, sub, "gradient"),
                    "Grad-CAM": image_saliency(model, sub, "grad_cam")}
            plot_saliency(sub[B.IMAGE].numpy(), maps, out / "saliency.png",
                          titles=[f"test image {k + 1} (risk {risk[r]:.2f})" for k, r in enumerate(rows)])
            summary["files"].append("saliency.png")
    write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def _rows(predictions: pd.DataFrame, split: str, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = predictions[(predictions["split"] == split) & predictions[model].notna()]
    return rows["y_true"].to_numpy(float), rows[model].to_numpy(float), rows.index.to_numpy()


def write_audit(run_dir: str | Path, *, model: str = HYBRID, n_boot: int = 500, seed: int = 0,
                what_if_assumptions: dict | None = None) -> dict:
    """Calibration, subgroup and impact audit of ``model``'s test predictions in ``run_dir``; see the module
    docstring for the files. Returns the JSON summary (also in ``audit/audit.json``).

    Raises
    ------
    ValueError
        If the run folder has no predictions.csv, or no validation/test predictions of ``model``.
    """
    run_dir = Path(run_dir)
    path = run_dir / "predictions.csv"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no predictions.csv; is it a run folder written by `healthfusion train`?")
    predictions = pd.read_csv(path, dtype={"stay_id": str})
    if model not in predictions.columns:
        raise ValueError(f"{path} has no column {model!r}; models: {[c for c in predictions.columns[3:]]}.")
    out = run_dir / "audit"
    out.mkdir(parents=True, exist_ok=True)
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    threshold = float(metrics.get("operating_points", {}).get(model, metrics.get("threshold", 0.5)))
    y_val, p_val, _ = _rows(predictions, "val", model)
    y, p, idx = _rows(predictions, "test", model)
    if y.size == 0 or y_val.size == 0:
        raise ValueError(f"{path} needs validation and test predictions of {model!r}.")
    summary: dict = {"model": model, "threshold": threshold, "n_test": int(y.size), "n_val": int(y_val.size)}

    # calibration, before and after recalibration fitted on the validation stays only
    both = 0 < y_val.sum() < y_val.size
    recal = {m: Calibrator(m).fit(y_val, p_val) for m in ("temperature", "isotonic")} if both else {}
    if not both:
        summary["recalibration_note"] = "The validation stays have one outcome only; no recalibration fitted."
    variants = {model: p, **{f"{model} + {m}": r.transform(p) for m, r in recal.items()}}
    calib = pd.concat([calibration_summary(y, q, n_boot=n_boot, seed=seed).assign(model=name)
                       for name, q in variants.items()], ignore_index=True)
    write_csv(calib, out / "calibration.csv", index=False)
    others = [c for c in predictions.columns if c not in ("stay_id", "split", "y_true", model)]
    curves = {name: (y, q) for name, q in variants.items() if not name.endswith("isotonic")}
    for name in others[:2]:
        yo, po, _ = _rows(predictions, "test", name)
        curves[name] = (yo, po)
    plot_reliability(curves, out / "reliability.png")
    if recal:
        summary["temperature"] = recal["temperature"].params_["temperature"]

    # decision curve and what-if at the operating point
    probs = {name: q for name, (yq, q) in curves.items() if yq.size == y.size}
    plot_decision_curve(y, probs, out / "decision_curve.png",
                        max_threshold=float(min(0.9, max(0.3, 3 * y.mean()))))
    assumptions = {**DEFAULT_WHAT_IF, **(what_if_assumptions or {})}
    scenario = what_if(y, p, threshold=threshold, **assumptions)
    shared_what_if = _shareable_what_if(scenario.to_dict())
    write_text(out / "what_if.json", json.dumps({**shared_what_if, "inputs": assumptions}, indent=2))
    summary["what_if"] = shared_what_if

    # subgroups
    domains_path = run_dir / "domains.csv"
    if domains_path.is_file():
        domains = pd.read_csv(domains_path, dtype=str).drop_duplicates(["stay_id", "split"])
        merged = predictions.loc[idx, ["stay_id", "split"]].merge(domains, on=["stay_id", "split"], how="left")
        cols = [c for c in DOMAIN_COLUMNS if c in merged.columns and merged[c].nunique(dropna=True) > 1]
        if cols:
            groups = merged[cols]
            table = group_metrics(y, p, groups, threshold=threshold, n_boot=n_boot, seed=seed)
            shared = suppress_groups(table, keep=("attribute", "group", "small_group"))
            write_csv(shared, out / "subgroups.csv", index=False)
            plot_subgroups(table, out / "subgroups.png")
            gaps = fairness_gaps(y, p, groups, threshold=threshold)
            write_csv(gaps, out / "fairness_gaps.csv", index=False)
            summary["subgroup_attributes"] = cols
            summary["small_groups"] = table.loc[table["small_group"], ["attribute", "group"]].to_dict("records")
            summary.update(_mitigate(predictions, domains, cols, model, threshold, seed, out))
        else:
            summary["subgroup_note"] = "The stays carry no domain column with more than one value."
    else:
        summary["subgroup_note"] = "No domains.csv in the run folder (re-run `healthfusion train`)."
    write_text(out / "audit.json", json.dumps(summary, indent=2, default=float))
    return summary


def _shareable_what_if(w: dict) -> dict:
    """The what-if summary as shared: the counts of the evaluated, flagged and event stays as
    :func:`~healthfusion.evaluation.disclosure.count_cell` shows them, and every value computed from the events among
    the flagged stays suppressed when that group is small."""
    from healthfusion.evaluation.disclosure import SUPPRESSED, count_cell

    out = {**w, "per_1000": dict(w["per_1000"])}
    for key in ("n", "events", "flagged", "events_flagged"):
        out[key] = count_cell(w[key])
    if is_small(int(w["flagged"]), int(w["events_flagged"])):
        for key in ("events_flagged", "events_avoided", "savings", "net_cost", "number_needed_to_treat"):
            out[key] = SUPPRESSED
        out["per_1000"].update(events_avoided=SUPPRESSED, net_cost=SUPPRESSED)
    if out["flagged"] == SUPPRESSED:  # the cost and the rate would give the count back
        out["intervention_cost"] = SUPPRESSED
        out["per_1000"]["flagged"] = SUPPRESSED
    return out


def _mitigate(predictions, domains, attributes, model, threshold, seed, out) -> dict:
    """Group-aware thresholds for the attribute with the largest equalised-odds gap on the validation stays (the
    test stays choose nothing); before/after on test."""
    val = predictions[(predictions["split"] == "val") & predictions[model].notna()]
    val = val.merge(domains[["stay_id", "split", *attributes]], on=["stay_id", "split"], how="left")
    try:
        val_gaps = fairness_gaps(val["y_true"].to_numpy(), val[model].to_numpy(),
                                 val[attributes].fillna("Unknown"), threshold=threshold)
    except ValueError as exc:
        return {"mitigation_note": f"Fairness gaps on the validation stays could not be computed: {exc}"}
    usable = val_gaps.dropna(subset=["equalized_odds_difference"])
    if usable.empty:
        return {"mitigation_note": "No attribute has two groups of at least 10 validation stays, 10 events and 10 "
                                   "non-events; nothing to mitigate."}
    attribute = str(usable.sort_values("equalized_odds_difference").iloc[-1]["attribute"])
    frames = {}
    for split in ("val", "test"):
        rows = predictions[(predictions["split"] == split) & predictions[model].notna()]
        merged = rows.merge(domains[["stay_id", "split", attribute]], on=["stay_id", "split"], how="left")
        group = merged[attribute].fillna("Unknown")
        sizes, events = group.value_counts(), merged["y_true"].groupby(group).sum()
        frames[split] = merged[group.isin([g for g in sizes.index if comparable(int(sizes[g]), int(events[g]))])]
    try:
        _, effect = group_thresholds(frames["val"]["y_true"], frames["val"][model], frames["val"][attribute],
                                     frames["test"]["y_true"], frames["test"][model], frames["test"][attribute],
                                     threshold=threshold, seed=seed)
    except ValueError as exc:
        return {"mitigation_note": f"Group-aware thresholds for {attribute} could not be fitted: {exc}"}
    write_csv(effect, out / "mitigation.csv")
    return {"mitigation_attribute": attribute, "mitigation": effect.round(4).to_dict()}
