"""Report sections built from the audit and explanation artefacts of a run folder, and its limitations."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from healthfusion.evaluation.compare import format_ci
from healthfusion.evaluation.disclosure import RULE, SUPPRESSED, count_cell
from healthfusion.report.html import image_data_uri, table_html

#: run-folder files (relative POSIX paths) that have their own place in the report
KNOWN_FILES = (
    "predictions.csv", "comparison.csv", "comparison_operating_point.csv", "comparison_difference.csv",
    "accounting.csv", "domains.csv",
    "tuning.csv", "roc.png", "pr.png",
    "audit/calibration.csv", "audit/reliability.png", "audit/subgroups.csv", "audit/fairness_gaps.csv",
    "audit/mitigation.csv", "audit/subgroups.png", "audit/decision_curve.png",
    "explanations/global_importance.csv", "explanations/top_features.csv", "explanations/importance_by_window.csv",
    "explanations/importance.png", "explanations/attention.png", "explanations/modality_contributions.csv",
    "explanations/modalities.png", "explanations/saliency.png",
    "alerts/alerts.csv", "alerts/alerts.png", "alerts/curves.csv", "alerts/hourly_scores.csv",
)

#: the early-warning metrics of ``alerts/alerts.csv`` with intervals, as the report shows them
_ALERT_METRICS = {"alerts_per_patient_day": "alerts / patient-day", "ppv": "PPV", "sensitivity": "sensitivity",
                  "lead_time_median": "lead time, median (h)"}


#: columns that identify a patient or a stay; the report replaces them with a per-report number
ID_COLUMNS = ("stay_id", "patient_id", "subject_id", "hadm_id", "icustay_id", "patientunitstayid", "RecordID")


def pseudonymise(frame: pd.DataFrame, identifiers: bool = False) -> pd.DataFrame:
    """``frame`` with each identifier column (:data:`ID_COLUMNS`) replaced by a number per distinct value, in
    order of first appearance (``stay_id`` -> ``stay`` 1, 2, ...); unchanged when ``identifiers`` is True."""
    if identifiers:
        return frame
    out = frame.copy()
    for col in [c for c in ID_COLUMNS if c in out.columns]:
        codes = {v: str(k + 1) for k, v in enumerate(pd.unique(out[col]))}
        out[col] = out[col].map(codes)
        out = out.rename(columns={col: col.removesuffix("_id") if col.endswith("_id") else f"{col} (number)"})
    return out


def read_csv(path: Path, **kw) -> pd.DataFrame | None:
    """``path`` read as a CSV table (``pandas.read_csv`` keywords), or None when the run folder has no such file."""
    return pd.read_csv(path, **kw) if path.is_file() else None


def table_block(frame: pd.DataFrame, caption: str | None = None, heading: str | None = None, index: bool = False,
                digits: int = 3) -> dict:
    """A report block showing ``frame`` as an HTML table."""
    return {"kind": "table", "html": table_html(frame, digits=digits, index=index), "caption": caption,
            "heading": heading}


def figure_block(path: Path, caption: str, heading: str | None = None) -> dict | None:
    """A report block embedding the image at ``path``; None when the file does not exist."""
    if not path.is_file():
        return None
    return {"kind": "figure", "src": image_data_uri(path), "caption": caption, "heading": heading}


def text_block(text: str, heading: str | None = None, warn: bool = False) -> dict:
    """A report block of one paragraph (``warn`` highlights it)."""
    return {"kind": "text", "text": text, "heading": heading, "warn": warn}


def section(sid: str, title: str, blocks: list) -> dict:
    """A report section; None blocks (missing figures) are dropped."""
    return {"id": sid, "title": title, "blocks": [b for b in blocks if b is not None]}


def subgroup_section(run_dir: Path, audit: dict) -> dict:
    """Per-group metrics with CIs, gaps, the mitigation's before/after and the forest plot."""
    blocks: list = []
    table_path = run_dir / "audit" / "subgroups.csv"
    if not table_path.is_file():
        note = audit.get("subgroup_note", "No subgroup audit in this run folder.")
        return section("subgroups", "Subgroups and fairness", [text_block(note)])
    t = pd.read_csv(table_path, keep_default_na=False, na_values=[""], dtype=str)
    small = (t["small_group"] == "True").to_numpy()
    show = t[["attribute", "group", "n", "n_positive"]].copy()
    for m, label in (("auroc", "AUROC"), ("ece", "ECE"), ("cal_slope", "calibration slope"), ("tpr", "TPR"),
                     ("fpr", "FPR"), ("ppv", "PPV"), ("calibration_gap", "observed - predicted")):
        if m not in t.columns:  # an audit written before the column existed
            continue
        show[label] = [SUPPRESSED if hidden else format_ci(*map(float, values))
                       for hidden, values in zip(small, t[[m, f"{m}_ci_low", f"{m}_ci_high"]].to_numpy(), strict=True)]
    blocks.append(table_block(show, caption=f"Test stays at the operating point {audit.get('threshold', 0.5):.3f}; "
                               f"95% bootstrap CIs. Small-cell suppression: {RULE}; small groups are left out of "
                               "the gaps below and of the figure."))
    gaps = run_dir / "audit" / "fairness_gaps.csv"
    if gaps.is_file():
        blocks.append(table_block(pd.read_csv(gaps, keep_default_na=False, na_values=[""]),
                                   heading="Gaps between groups (Fairlearn)",
                                   caption="Equalised-odds difference: the larger of the TPR and FPR ranges over "
                                           "groups; demographic-parity difference: the range of flag rates."))
    mitigation = run_dir / "audit" / "mitigation.csv"
    if mitigation.is_file():
        blocks.append(table_block(pd.read_csv(mitigation), heading="Mitigation: group-aware thresholds for "
                                   f"{audit.get('mitigation_attribute', '?')}",
                                   caption="Fairlearn ThresholdOptimizer (equalised odds) fitted on the validation "
                                           "stays, applied to the test stays: before = one threshold for all."))
    elif audit.get("mitigation_note"):
        blocks.append(text_block(audit["mitigation_note"]))
    blocks.append(figure_block(run_dir / "audit" / "subgroups.png", "AUROC by subgroup with 95% CI"))
    return section("subgroups", "Subgroups and fairness", blocks)


def explanation_section(run_dir: Path, identifiers: bool = False) -> dict:
    """Global importance, per-patient contributors, attention, modality contributions and saliency.

    The per-stay table numbers the stays it shows (``stay`` 1, 2, ...) unless ``identifiers`` is True, when it
    shows their stay ids (internal use only)."""
    ex = run_dir / "explanations"
    summary_path = ex / "summary.json"
    if not summary_path.is_file():
        return section("explanations", "Explanations", [text_block(
            "This run folder has no explanations; compute them with `healthfusion explain RUN_DIR` and rebuild "
            "the report.", warn=True)])
    s = json.loads(summary_path.read_text())
    blocks: list = [text_block(f"GradientShap (expected gradients, {s.get('n_samples')} background draws per stay) "
                               f"on {s.get('n_explained')} test stays against {s.get('n_background')} training "
                               "stays; attributions are in logit units, summed over time for each variable.")]
    blocks.append(figure_block(ex / "importance.png", "Mean absolute attribution per variable", "Global importance"))
    top = ex / "top_features.csv"
    if top.is_file():
        frame = pd.read_csv(top, dtype={"stay_id": str})
        first = frame["stay_id"].drop_duplicates().head(6)
        shown = pseudonymise(frame[frame["stay_id"].isin(first)], identifiers)
        caption = ("Stay ids are shown for internal use: do not share this report outside the care team."
                   if identifiers else "Stays are numbered in this report only; their ids are in "
                   "explanations/top_features.csv (`healthfusion report --identifiers` shows them, for internal use).")
        blocks.append(table_block(shown, heading="Top contributors per stay",
                                   caption="Five strongest signed contributions for six of the explained stays. "
                                           + caption))
    window = ex / "importance_by_window.csv"
    if window.is_file():
        frame = pd.read_csv(window, index_col=0)
        cols = frame.sum().sort_values(ascending=False).index[:8]
        blocks.append(table_block(frame[cols].reset_index(), heading="When it matters: importance per time window",
                                   caption="Mean |attribution| summed within each window (hours from the start)."))
    blocks.append(figure_block(ex / "attention.png", "The LSTM's attention weights over time for the highest-risk "
                                "explained stay, under its most important variables.", "Attention over time"))
    blocks.append(figure_block(ex / "modalities.png", "Each modality's Shapley contribution to the fused logit, "
                                "switching modalities off through the model's missing-modality path.",
                                "Modality contributions"))
    blocks.append(figure_block(ex / "saliency.png", "Gradient saliency and Grad-CAM overlaid on test images.",
                                "Image saliency"))
    return section("explanations", "Explanations", blocks)


def limitations(info: dict, audit: dict, calibration: pd.DataFrame | None) -> list[str]:
    """Limitations that follow from this run's own numbers (``info`` and ``audit`` of the run folder and its
    ``audit/calibration.csv``, None when absent), then the general ones."""
    items = []
    metrics, cfg = info["metrics"], info["config"]
    n = metrics.get("n", 0)
    events = int(round(n * metrics.get("prevalence", 0))) if n else 0
    if metrics.get("test_set") is False:
        items.append("No test set: every figure is on the validation stays that chose the epoch, the calibrator and "
                     "the operating point; validate on held-out data before use.")
    elif n and events < 100:
        items.append(f"The test set has {count_cell(n)} stays and {count_cell(events)} events: intervals are wide "
                     "and small differences "
                     "between models are not established.")
    if not cfg.get("data", {}).get("test") and metrics.get("test_set") is not False:
        items.append("Tested on a held-out split of the training cohort, not on another hospital or period: "
                     "performance elsewhere is unknown until validated locally.")
    if calibration is not None:
        c = calibration
        slope = c[(c["model"] == audit.get("model", "hybrid")) & (c["metric"] == "slope")]["value"]
        if len(slope) and abs(float(slope.iloc[0]) - 1) > 0.2:
            items.append(f"Calibration slope {float(slope.iloc[0]):.2f} (ideal 1): predicted risks are "
                         + ("too extreme" if float(slope.iloc[0]) < 1 else "too moderate")
                         + "; use the recalibrated probabilities or recalibrate locally before acting on them.")
    small = audit.get("small_groups") or []
    if small:
        items.append(f"Subgroups too small to judge ({RULE}; left out of the fairness gaps): "
                     + ", ".join(f"{g['attribute']}={g['group']}" for g in small) + ".")
    if "subgroup_note" in audit:
        items.append("No subgroup audit: " + audit["subgroup_note"])
    items += [
        "Attributions explain the model, not the patient: they are associations learned from data, not causes, "
        "and gradient-based values depend on the background stays chosen.",
        "The what-if analysis rests on the stated assumptions (effectiveness, costs); it is a planning aid, not "
        "evidence of benefit.",
        "Labels and features come from routine records: documentation practice, missingness and coding may differ "
        "between sites and change over time.",
    ]
    return items


def alerts_section(run_dir: Path) -> dict | None:
    """"Early warning" from ``alerts/`` (``healthfusion alerts RUN_DIR/model --out RUN_DIR/alerts``): the model
    and NEWS2 at each operating point with their 95% bootstrap intervals, and the PPV/alert-rate curves; None
    when the run folder has no alert results."""
    path = run_dir / "alerts" / "alerts.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    shown = table[["score", "operating_point", "threshold", "n_alerts"]].copy()
    for metric, name in _ALERT_METRICS.items():
        if f"{metric}_ci_low" in table.columns:
            shown[name] = [f"{v:.3g} ({lo:.3g} to {hi:.3g})" for v, lo, hi in
                           zip(table[metric], table[f"{metric}_ci_low"], table[f"{metric}_ci_high"], strict=True)]
        else:  # written before intervals existed
            shown[name] = table[metric]
    shown["stays (with outcome)"] = [f"{n} ({k})" for n, k in zip(table["n_stays"], table["n_positive"], strict=True)]
    boot = f"{int(table['n_boot'].iloc[0])} bootstrap resamples of stays" if "n_boot" in table.columns else \
        "no intervals (re-run healthfusion alerts for them)"
    return section("alerts", "Early warning", [
        text_block("The model scored every hour as an early-warning system against the NEWS2 score from the same "
                   "vitals: at the threshold that keeps each within the alert budget, and NEWS2 at the model's "
                   f"sensitivity (matched sensitivity). Intervals: 95%, {boot} (stratified by outcome)."),
        table_block(shown, heading="Operating points"),
        figure_block(run_dir / "alerts" / "alerts.png", "PPV and alerts per patient-day against sensitivity."),
    ])
