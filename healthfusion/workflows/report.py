"""``healthfusion report RUN_DIR``: collect a run folder's outputs into one self-contained HTML report.

The run folder is one written by ``healthfusion train`` or the demo (``config.yaml``, ``predictions.csv``,
``metrics.json``, ``comparison.csv``, ``model/`` ...). The calibration/subgroup/impact audit is computed from the
predictions when the folder has none; explanations need the model and the data, so a folder without
``explanations/`` gets them with ``explain=True`` (``healthfusion explain RUN_DIR``). Tables (``*.csv``) and
figures (``*.png``) the report does not know are shown too: under "Transfer" or "Multi-task" when their path names
that, else under "Other outputs".
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd

from healthfusion.evaluation.compare import format_ci, format_comparison
from healthfusion.report.html import write_report
from healthfusion.workflows.audit import HYBRID, write_audit
from healthfusion.workflows.ensemble import primary_network_dir
from healthfusion.workflows.evaluate import display_comparison, run_label
from healthfusion.workflows.report_sections import (
    KNOWN_FILES,
    explanation_section,
    figure_block,
    limitations,
    section,
    subgroup_section,
    table_block,
    text_block,
)

_LABELS = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "ece": "ECE", "slope": "calibration slope",
           "intercept": "calibration intercept"}


def _read_csv(path: Path, **kw) -> pd.DataFrame | None:
    return pd.read_csv(path, **kw) if path.is_file() else None


def _load(run_dir: Path) -> dict:
    import yaml

    if not (run_dir / "predictions.csv").is_file():
        raise ValueError(f"{run_dir} has no predictions.csv; pass a run folder written by `healthfusion train` or "
                         "`healthfusion demo`.")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    model_cfg = {}
    model_dir = primary_network_dir(run_dir / "model")  # an ensemble's first network describes the architecture
    if (model_dir / "config.json").is_file():
        model_cfg = json.loads((model_dir / "config.json").read_text())
    predictions = pd.read_csv(run_dir / "predictions.csv", dtype={"stay_id": str})
    return {"config": config or {}, "metrics": metrics, "model": model_cfg, "predictions": predictions}


def _card(run_dir: Path, info: dict, audit: dict) -> list[tuple[str, str]]:
    cfg, model, metrics = info["config"], info["model"], info["metrics"]
    data = cfg.get("data", {})
    label = data.get("label", "the outcome")
    mods = [m for m in ("ts", "static", "codes", "text", "image") if model.get(m)]
    names = {"ts": "time series (LSTM)", "static": "static features (MLP)", "codes": "codes", "text": "notes",
             "image": "images (CNN)"}
    source = data.get("cohort") or f"{data.get('source')} ({data.get('path')})"
    test = data.get("test")
    test_text = (f"external test set: {test.get('cohort') or test.get('source')} ({test.get('path')})" if test
                 else "held-out test split of the same cohort (patient-level)")
    ensemble = metrics.get("ensemble")
    headline = audit.get("model", HYBRID)
    comparison = metrics.get("comparison", {}).get(headline, {})
    described = (f"{model.get('model_type', 'hybrid')} fusion model ({model.get('fusion', '?')} fusion) over "
                 + (", ".join(names[m] for m in mods) or "?"))
    if ensemble:
        weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(ensemble["members"], ensemble["weights"], strict=True))
        described = (f"ensemble of the {described} (logits of {len(ensemble['seeds'])} seeds averaged)"
                     + (f" and gradient boosting on engineered features; weights {weights} ("
                        + {"validation": "chosen by log-loss on the validation stays",
                           "cross_fit": "chosen by log-loss on cross-fitted predictions",
                           "uniform": "equal"}.get(ensemble["weights_from"], ensemble["weights_from"]) + ")"
                        if len(ensemble["members"]) > 1 else ""))
    card = [
        ("Model", described),
        ("Predicts", f"probability of {label!r} from data recorded up to each stay's prediction time"),
        ("Intended use", "decision support for clinicians and quality teams: flag stays at high risk of "
                         f"{label!r} for review, in populations like the training cohort; a second opinion, "
                         "never a replacement for clinical judgement."),
        ("Not intended for", "automated decisions without review; patients or settings unlike the training cohort "
                             "(other ages, units, sites or time periods) without local validation; causal claims "
                             "about individual variables."),
        ("Training data", f"{source}; label {label!r}"),
        ("Evaluation", f"{test_text}; n = {metrics.get('n', '?')}, prevalence "
                       f"{metrics.get('prevalence', float('nan')):.3f}"),
        ("Headline result", format_ci(comparison.get("auroc", float("nan")), comparison.get("auroc_ci_low", float("nan")),
                                      comparison.get("auroc_ci_high", float("nan")))
                            + f" AUROC (95% bootstrap CI), {headline}"),
        ("Operating point", f"{audit.get('threshold', float('nan')):.3f} (chosen on the validation stays)"),
        ("Run", f"{cfg.get('name', run_dir.name)} — {run_dir}"),
    ]
    if model.get("model_fingerprint"):
        card.append(("Model fingerprint", model["model_fingerprint"][:16]))
    privacy = metrics.get("privacy")
    if privacy:
        card.append(("Differential privacy", f"DP-SGD, epsilon {privacy['epsilon']:.2f} at delta {privacy['delta']:.1e} "
                                             f"(Opacus {privacy['accountant'].upper()} accountant, noise multiplier "
                                             f"{privacy['noise_multiplier']:.2f}, clipping {privacy['max_grad_norm']}, "
                                             f"{privacy['steps']} steps); {privacy.get('trained', '')}"))
    return card


def _data_section(run_dir: Path, info: dict) -> dict:
    pred, metrics = info["predictions"], info["metrics"]
    counts = pred.groupby("split").agg(stays=("y_true", "size"), events=("y_true", "sum"))
    counts["events"] = counts["events"].astype(int)
    counts["prevalence"] = counts["events"] / counts["stays"]
    blocks = [table_block(counts.reset_index(), heading="Evaluated stays per split",
                          caption="Training stays are not listed here; they are counted in the accounting below.")]
    acc = _read_csv(run_dir / "accounting.csv")
    if acc is not None and len(acc):
        wide = acc.pivot_table(index=["cohort", "table"], columns="outcome", values="rows", aggfunc="sum",
                               sort=False)
        wide.columns.name = None
        blocks.append(table_block(wide.reset_index(), heading="Row accounting of the input data",
                                  caption="Every input row is read and then used or dropped with a reason.", digits=0))
    skipped = metrics.get("models_without_score") or {}
    if skipped:
        blocks.append(text_block("Stays without a score (left out of that model's metrics, never defaulted): "
                                 + ", ".join(f"{k}: {v}" for k, v in skipped.items()), warn=True))
    return section("data", "Data and cohort", blocks)


def _metrics_sections(run_dir: Path, info: dict) -> list[dict]:
    blocks, base = [], []
    table = _read_csv(run_dir / "comparison.csv", index_col=0)
    if table is not None:
        blocks.append(table_block(format_comparison(table).reset_index(names="model"), heading="At threshold 0.5"))
    op = _read_csv(run_dir / "comparison_operating_point.csv", index_col=0)
    if op is not None:
        points = info["metrics"].get("operating_points", {})
        blocks.append(table_block(format_comparison(op).reset_index(names="model"),
                                  heading="At each model's operating point (chosen on validation)",
                                  caption="Thresholds: " + ", ".join(f"{k} {v:.3f}" for k, v in points.items())))
    blocks.append(text_block("Values are point estimates with percentile-bootstrap 95% intervals on the test stays."))
    curves = [figure_block(run_dir / "roc.png", "ROC curves on the test stays"),
              figure_block(run_dir / "pr.png", "Precision-recall curves on the test stays"),
              figure_block(run_dir / "audit" / "reliability.png", "Calibration: observed vs predicted risk")]
    figs = {"kind": "figures", "figures": [c for c in curves if c]}
    if table is not None and HYBRID in table.index and len(table) > 1:
        rows = []
        for name in table.index.drop(HYBRID):
            rows.append({"model": name, **{f"{m} difference (hybrid - model)": table.loc[HYBRID, m] - table.loc[name, m]
                                           for m in ("auroc", "auprc", "brier")}})
        base.append(table_block(pd.DataFrame(rows), caption="Positive AUROC/AUPRC and negative Brier differences favour "
                                                            "the hybrid; see the metric table for each model's CI."))
    tuning = _read_csv(run_dir / "tuning.csv")
    if tuning is not None:
        base.append(table_block(tuning, heading="Hyperparameter search (CV on the training stays)"))
    history = run_dir / "history.json"
    if history.is_file():
        h = json.loads(history.read_text())
        base.append(text_block(f"Hybrid training: {len(h.get('train_loss', []))} epochs, best epoch "
                               f"{h.get('best_epoch')}, {sum(h.get('epoch_seconds', [])):.0f} s."))
    return [section("metrics", "Metrics with confidence intervals", blocks),
            section("curves", "ROC, precision-recall and calibration curves", [figs]),
            section("baselines", "Baseline comparison", base or [text_block("No baselines in this run.")])]


def _calibration_section(run_dir: Path, table: pd.DataFrame | None, audit: dict) -> dict:
    blocks = []
    if table is not None:
        table = table.assign(**{"estimate (95% CI)": [format_ci(v, lo, hi) for v, lo, hi in
                                                      table[["value", "ci_low", "ci_high"]].to_numpy()]})
        wide = table.pivot(index="model", columns="metric", values="estimate (95% CI)")
        wide = wide[[c for c in ("ece", "brier", "slope", "intercept") if c in wide]].rename(columns=_LABELS)
        wide.columns.name = None
        blocks.append(table_block(wide.reset_index(), caption="Recalibration (temperature scaling, isotonic regression) "
                                                              "was fitted on the validation stays only and applied to "
                                                              "test" + (f"; fitted temperature {audit['temperature']:.3f}." if "temperature" in audit
                                                                        else f". {audit.get('recalibration_note', '')}")))
    blocks.append(figure_block(run_dir / "audit" / "reliability.png", "Reliability diagram (test stays)"))
    return section("calibration", "Calibration", blocks)


def _impact_section(run_dir: Path) -> dict:
    blocks = [figure_block(run_dir / "audit" / "decision_curve.png", "Net benefit across threshold probabilities "
                            "(the model vs treating everyone or no one).")]
    path = run_dir / "audit" / "what_if.json"
    if path.is_file():
        w = json.loads(path.read_text())
        rows = [("threshold", w["threshold"]), ("stays evaluated", w["n"]), ("events", w["events"]),
                ("stays flagged", w["flagged"]), ("events among flagged", w["events_flagged"]),
                ("events avoided", w["events_avoided"]), ("intervention cost", w["intervention_cost"]),
                ("savings from avoided events", w["savings"]), ("net cost (negative = saving)", w["net_cost"]),
                ("number needed to treat", w["number_needed_to_treat"]),
                ("per 1,000 stays: flagged", w["per_1000"]["flagged"]),
                ("per 1,000 stays: events avoided", w["per_1000"]["events_avoided"]),
                ("per 1,000 stays: net cost", w["per_1000"]["net_cost"])]
        blocks.append(table_block(pd.DataFrame(rows, columns=["what-if", "value"]), heading="What-if at the operating point",
                                  digits=2))
        blocks.append({"kind": "list", "items": w["assumptions"], "heading": "Assumptions"})
    return section("impact", "Impact analysis", blocks)


def _extra_sections(run_dir: Path, out: Path) -> list[dict]:
    groups: dict[str, list[dict]] = {"transfer": [], "multitask": [], "other": []}
    for path in sorted(p for p in run_dir.rglob("*") if p.suffix in (".csv", ".png") and p.is_file()):
        rel = path.relative_to(run_dir)
        if rel.as_posix() in KNOWN_FILES or rel.parts[0] in ("model", "cohort") or path == out:
            continue
        lower = rel.as_posix().lower()
        key = "transfer" if "transfer" in lower else "multitask" if ("multitask" in lower or "multi_task" in lower) else "other"
        if path.suffix == ".png":
            groups[key].append(figure_block(path, rel.as_posix()))
        else:
            frame = pd.read_csv(path)
            groups[key].append(table_block(frame, heading=rel.as_posix()))
    titles = {"transfer": "Transfer", "multitask": "Multi-task", "other": "Other outputs"}
    return [section(k, titles[k], blocks) for k, blocks in groups.items() if blocks]


#: files that mark a study run folder, and the order its tables are shown in
_STUDIES = {
    "transfer": ("gains.csv", ("summary.csv", "gains.csv", "shift.csv", "shap/global_importance.csv",
                               "shap/top_features.csv", "results.csv")),
    "multitask": ("tasks.csv", ("tasks.csv", "tim_attention.csv", "tim_ablation.csv", "tim_retrain.csv",
                                "comparison.csv")),
}
_STUDY_TITLES = {"transfer": "cross-domain transfer", "multitask": "multitask (M3H)"}


def study_kind(run_dir: Path) -> str | None:
    """``"transfer"`` or ``"multitask"`` for a run folder of `healthfusion transfer` / `multitask`, else None."""
    for kind, (marker, _) in _STUDIES.items():
        if (run_dir / marker).is_file() and not (run_dir / "audit").is_dir():
            return kind
    return None


def _study_report(run_dir: Path, out: Path, kind: str) -> Path:
    """The report of a transfer or multitask run folder: its settings, every table (in a useful order) and
    figure it wrote."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    cfg = cfg or {}
    data = cfg.get("data", {})
    card = [("Study", _STUDY_TITLES[kind]), ("Run", f"{cfg.get('name', run_dir.name)} - {run_dir}")]
    if data.get("label"):
        card.append(("Outcome", str(data["label"])))
    if kind == "transfer":
        domain = cfg.get("domain", {})
        card.append(("Domains", f"{domain.get('column', '?')}: target {domain.get('target', '?')}, source "
                                f"{domain.get('source') or 'the rest'}"))
        protocol = cfg.get("protocol", {})
        card.append(("Protocol", f"target sizes {protocol.get('sizes', '?')} x seeds {protocol.get('seeds', '?')}; "
                                 f"strategies {cfg.get('strategies', '?')}"))
    else:
        card.append(("Tasks", ", ".join(f"{t.get('name')} ({t.get('kind')})" for t in cfg.get("tasks", []))))
        card.append(("Seeds", str(cfg.get("comparison", {}).get("seeds", "?"))))
    order = _STUDIES[kind][1]
    tables = [run_dir / name for name in order if (run_dir / name).is_file()]
    tables += sorted(p for p in run_dir.rglob("*.csv") if p not in tables and "models" not in p.parts
                     and p.parts[len(run_dir.parts)] not in ("model", "cohort"))
    blocks = []
    for path in tables:
        frame = pd.read_csv(path)
        rel = path.relative_to(run_dir).as_posix()
        if len(frame) > 200:
            blocks.append(text_block(f"{rel}: {len(frame):,} rows, the first 200 shown; the file has them all.", heading=rel))
            frame = frame.head(200)
        blocks.append(table_block(frame, heading=rel))
    figures = [figure_block(p, p.relative_to(run_dir).as_posix()) for p in sorted(run_dir.rglob("*.png"))
               if "models" not in p.parts]
    sections = [section("results", "Results", blocks)]
    if figures:
        sections.append(section("figures", "Figures", [{"kind": "figures", "figures": figures}]))
    notes = [f"Numbers are from the run folder {run_dir} as written by `healthfusion {kind}`; intervals over seeds "
             "are Student-t intervals, per-run intervals are bootstrap intervals on that run's test stays.",
             "Model selection used training and validation stays only; the test stays were scored once."]
    sections.append(section("limitations", "Limitations", [{"kind": "list", "items": notes}]))
    context = {"title": f"{cfg.get('name', run_dir.name)}: {_STUDY_TITLES[kind]} report",
               "subtitle": f"run folder {run_dir}",
               "generated": f"Generated by healthfusion on {datetime.now():%Y-%m-%d %H:%M} from {run_dir}",
               "card": card, "sections": sections}
    return write_report(context, out)


def _kind_report(run_dir: Path, out: Path, label: dict) -> Path:
    """The report of a multiclass or regression run of `healthfusion train`: the data, the metric table with
    bootstrap CIs and the training history (the calibration/subgroup/impact audit and explanations are for binary
    labels)."""
    info = _load(run_dir)
    cfg, metrics, pred = info["config"], info["metrics"], info["predictions"]
    kind = label["kind"]
    counts = pred.groupby("split").agg(stays=("y_true", "size"))
    if kind == "multiclass":
        counts = counts.join(pd.crosstab(pred["split"], pred["y_true"].astype(str)))
    else:
        counts = counts.join(pred.groupby("split")["y_true"].agg(["mean", "std", "min", "max"]))
    data = [table_block(counts.reset_index(), heading="Evaluated stays per split" + (" and class" if kind ==
                                                                                      "multiclass" else ""))]
    acc = _read_csv(run_dir / "accounting.csv")
    if acc is not None and len(acc):
        wide = acc.pivot_table(index=["cohort", "table"], columns="outcome", values="rows", aggfunc="sum", sort=False)
        wide.columns.name = None
        data.append(table_block(wide.reset_index(), heading="Row accounting of the input data", digits=0))
    blocks = []
    table = _read_csv(run_dir / "comparison.csv", index_col=0)
    if table is not None:
        shown, title = display_comparison(table)
        blocks.append(table_block(shown, heading=title))
    skipped = metrics.get("models_without_score") or {}
    if skipped:
        blocks.append(text_block("Stays without a score (left out of that model's metrics, never defaulted): "
                                 + ", ".join(f"{k}: {v}" for k, v in skipped.items()), warn=True))
    if (run_dir / "history.json").is_file():
        h = json.loads((run_dir / "history.json").read_text())
        blocks.append(text_block(f"Hybrid training: {len(h.get('train_loss', []))} epochs, best epoch "
                                 f"{h.get('best_epoch')}, {sum(h.get('epoch_seconds', [])):.0f} s."))
    notes = [f"Label {label['name']!r} is {kind}: calibration, subgroup, impact and explanation analyses are "
             "computed for binary labels only and are not part of this report.",
             "Values are point estimates with percentile-bootstrap 95% intervals on the test stays"
             + (" (resampled within each class)." if kind == "multiclass" else "."),
             "Model selection used training and validation stays only; the test stays were scored once."]
    card = [("Predicts", f"{label['name']!r} ({kind}" + (f": {', '.join(label.get('classes') or [])})"
                                                          if kind == "multiclass" else ")")),
            ("Training data", str(cfg.get("data", {}).get("cohort") or cfg.get("data", {}).get("source"))),
            ("Evaluation", f"n = {metrics.get('n', '?')} test stays"),
            ("Run", f"{cfg.get('name', run_dir.name)} - {run_dir}")]
    sections = [section("data", "Data and cohort", data), section("metrics", "Metrics with confidence intervals",
                                                                  blocks),
                section("limitations", "Limitations", [{"kind": "list", "items": notes}])]
    context = {"title": f"{cfg.get('name', run_dir.name)}: {kind} model report",
               "subtitle": f"Outcome {label['name']} · run folder {run_dir}",
               "generated": f"Generated by healthfusion on {datetime.now():%Y-%m-%d %H:%M} from {run_dir}",
               "card": card, "sections": sections}
    return write_report(context, out)


def build_report(run_dir: str | Path, out: str | Path | None = None, *, recompute_audit: bool = False,
                 explain: bool = False, console=None) -> Path:
    """Write ``out`` (default ``RUN_DIR/report.html``) for the run folder ``run_dir``; return its path.

    Parameters
    ----------
    recompute_audit : bool
        Recompute ``audit/`` even if present.
    explain : bool
        Compute ``explanations/`` when missing (needs the run's data, as named in ``config.yaml``).

    Raises
    ------
    ValueError
        If ``run_dir`` is not a run folder (no ``predictions.csv``), or the data for explanations cannot be read.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"Run folder {run_dir} does not exist.")
    out = Path(out) if out else run_dir / "report.html"
    study = study_kind(run_dir)
    if study is not None:
        return _study_report(run_dir, out, study)
    label = run_label(run_dir)
    if label is not None and label.get("kind", "binary") != "binary":
        return _kind_report(run_dir, out, label)
    info = _load(run_dir)
    if recompute_audit or not (run_dir / "audit" / "audit.json").is_file():
        audited = "ensemble" if "ensemble" in info["predictions"].columns else HYBRID
        audit = write_audit(run_dir, model=audited, n_boot=300)
    else:
        audit = json.loads((run_dir / "audit" / "audit.json").read_text())
    if explain and not (run_dir / "explanations" / "summary.json").is_file():
        from healthfusion.workflows.explain import explain_run

        explain_run(run_dir, console=console)
    calibration = _read_csv(run_dir / "audit" / "calibration.csv")
    sections = [_data_section(run_dir, info), *_metrics_sections(run_dir, info),
                _calibration_section(run_dir, calibration, audit), subgroup_section(run_dir, audit),
                explanation_section(run_dir), _impact_section(run_dir), *_extra_sections(run_dir, out),
                section("limitations", "Limitations", [{"kind": "list", "items": limitations(info, audit, calibration)}])]
    cfg = info["config"]
    context = {"title": f"{cfg.get('name', run_dir.name)}: risk model report",
               "subtitle": f"Outcome {cfg.get('data', {}).get('label', '?')} · run folder {run_dir}",
               "generated": f"Generated by healthfusion on {datetime.now():%Y-%m-%d %H:%M} from {run_dir}",
               "card": _card(run_dir, info, audit), "sections": sections}
    return write_report(context, out)
