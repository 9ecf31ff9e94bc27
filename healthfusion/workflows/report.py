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
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd

from healthfusion.evaluation.compare import format_ci, format_comparison
from healthfusion.evaluation.disclosure import (
    RULE,
    count_cell,
    suppress_groups,
)
from healthfusion.models.run_ensemble import primary_network_dir
from healthfusion.report.html import write_report
from healthfusion.workflows.audit import HYBRID, write_audit
from healthfusion.workflows.evaluate import (
    display_challenge,
    display_comparison,
    display_differences,
    run_label,
)
from healthfusion.workflows.model_card import card_rows, is_synthetic, tripod_items
from healthfusion.workflows.report_sections import (
    KNOWN_FILES,
    alerts_section,
    explanation_section,
    figure_block,
    limitations,
    pseudonymise,
    read_csv,
    section,
    subgroup_section,
    table_block,
    text_block,
)
from healthfusion.workflows.report_studies import study_kind, study_report
from healthfusion.workflows.runfolder import (
    ARTEFACT_FOLDERS,
    MANIFEST,
    artefact_files,
    check_artefacts,
    record_artefacts,
)

_LABELS = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "ece": "ECE", "slope": "calibration slope",
           "intercept": "calibration intercept"}


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


def _data_section(run_dir: Path, info: dict) -> dict:
    pred, metrics = info["predictions"], info["metrics"]
    counts = pred.groupby("split").agg(stays=("y_true", "size"), events=("y_true", "sum"))
    counts["events"] = counts["events"].astype(int)
    counts["prevalence"] = counts["events"] / counts["stays"]
    counts = suppress_groups(counts.reset_index(), n="stays", events="events", keep=("split",))
    blocks = [table_block(counts, heading="Evaluated stays per split",
                          caption="Training stays are not listed here; they are counted in the accounting below "
                                  f"and in the model card. Small-cell suppression: {RULE}.")]
    acc = read_csv(run_dir / "accounting.csv")
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


NO_TEST_NOTE = ("This run has no test set (split: predefined without test stays, or test: 0, and no data.test): it "
                "trained and validated only. The figures below are on the validation stays, which chose the epoch, "
                "the calibrator and the operating point, so they are optimistic; score held-out data with "
                "`healthfusion predict --model RUN/model ...`.")


def _no_test_blocks(info: dict) -> list[dict]:
    """A warning block when the run has no test set (its ``metrics.json`` says ``test_set: false``)."""
    return [text_block(NO_TEST_NOTE, warn=True)] if info["metrics"].get("test_set") is False else []


def _metrics_sections(run_dir: Path, info: dict) -> list[dict]:
    blocks, base = _no_test_blocks(info), []
    table = read_csv(run_dir / "comparison.csv", index_col=0)
    if table is not None:
        blocks.append(table_block(format_comparison(table).reset_index(names="model"), heading="At threshold 0.5"))
    op = read_csv(run_dir / "comparison_operating_point.csv", index_col=0)
    if op is not None:
        points = info["metrics"].get("operating_points", {})
        blocks.append(table_block(format_comparison(op).reset_index(names="model"),
                                  heading="At each model's operating point (chosen on validation)",
                                  caption="Thresholds: " + ", ".join(f"{k} {v:.3f}" for k, v in points.items())))
    by_set = read_csv(run_dir / "comparison_by_test_set.csv", index_col=[0, 1])
    if by_set is not None and len(by_set):
        shown = pd.concat([format_comparison(part.droplevel(0)).assign(test_set=name)
                           for name, part in by_set.groupby(level=0, sort=False)])
        blocks.append(table_block(shown.reset_index(names="model").set_index(["test_set", "model"]).reset_index(),
                                  heading="Each external test set on its own (threshold 0.5)"))
    challenge = read_csv(run_dir / "challenge2012.csv", index_col=0)
    if challenge is not None and len(challenge):
        shown, _ = display_challenge(challenge)
        blocks.append(table_block(
            shown, heading="PhysioNet Challenge 2012 scores",
            caption="Event 1: min(sensitivity, positive predictivity) of the high-risk group at each model's "
                    "operating point chosen on validation stays (higher is better); event 2: the challenge's "
                    "Hosmer-Lemeshow H statistic of the risks (lower is better), over 10 risk groups. Intervals: "
                    "95% percentile bootstrap over the test stays, resampled within deaths and survivors. Best "
                    "published on the challenge's hidden set C: event 1 0.5353 (SAPS-I 0.3125), event 2 17.88."))
    diff = read_csv(run_dir / "comparison_difference.csv", index_col=0)
    if diff is not None and len(diff):
        shown, title = display_differences(diff)
        blocks.append(table_block(shown, heading=title))
    blocks.append(text_block("Values are point estimates with percentile-bootstrap 95% intervals on the test stays; "
                             "ECE, calibration slope (1 is ideal) and intercept (0 is ideal) are of the probabilities "
                             "as scored (the run's own model calibrated on the validation stays)."))
    curves = [figure_block(run_dir / "roc.png", "ROC curves on the test stays"),
              figure_block(run_dir / "pr.png", "Precision-recall curves on the test stays")]
    figs = {"kind": "figures", "figures": [c for c in curves if c]}
    if table is not None and HYBRID in table.index and len(table) > 1:
        rows = []
        for name in table.index.drop(HYBRID):
            rows.append({"model": name, **{f"{m} difference (hybrid - model)": table.loc[HYBRID, m] - table.loc[name, m]
                                           for m in ("auroc", "auprc", "brier")}})
        base.append(table_block(pd.DataFrame(rows), caption="Positive AUROC/AUPRC and negative Brier differences favour "
                                                            "the hybrid; see the metric table for each model's CI."))
    tuning = read_csv(run_dir / "tuning.csv")
    if tuning is not None:
        base.append(table_block(tuning, heading="Hyperparameter search (CV on the training stays)"))
    history = run_dir / "history.json"
    if history.is_file():
        h = json.loads(history.read_text())
        base.append(text_block(f"Hybrid training: {len(h.get('train_loss', []))} epochs, best epoch "
                               f"{h.get('best_epoch')}, {sum(h.get('epoch_seconds', [])):.0f} s."))
    return [section("metrics", "Metrics with confidence intervals", blocks),
            section("curves", "ROC and precision-recall curves", [figs]),
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
        table = pd.DataFrame({"what-if": [r[0] for r in rows], "value": pd.Series([r[1] for r in rows], dtype=object)})
        blocks.append(table_block(table, heading="What-if at the operating point", digits=2))  # counts stay integers
        blocks.append({"kind": "list", "items": w["assumptions"], "heading": "Assumptions"})
    return section("impact", "Impact analysis", blocks)


def _extra_sections(run_dir: Path, out: Path, identifiers: bool = False) -> list[dict]:
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
            frame = pseudonymise(pd.read_csv(path), identifiers)
            groups[key].append(table_block(frame, heading=rel.as_posix()))
    titles = {"transfer": "Transfer", "multitask": "Multi-task", "other": "Other outputs"}
    return [section(k, titles[k], blocks) for k, blocks in groups.items() if blocks]


#: files that mark a study run folder, and the order its tables are shown in
def _kind_report(run_dir: Path, out: Path, label: dict) -> Path:
    """The report of a multiclass or regression run of `healthfusion train`: the data, the metric table with
    bootstrap CIs and the training history (the calibration/subgroup/impact audit and explanations are for binary
    labels)."""
    check_artefacts(run_dir)
    info = _load(run_dir)
    cfg, metrics, pred = info["config"], info["metrics"], info["predictions"]
    kind = label["kind"]
    counts = pred.groupby("split").agg(stays=("y_true", "size"))
    if kind == "multiclass":
        counts = counts.join(pd.crosstab(pred["split"], pred["y_true"].astype(str)).map(count_cell))
    else:
        counts = counts.join(pred.groupby("split")["y_true"].agg(["mean", "std", "min", "max"]))
    data = [table_block(counts.reset_index(), heading="Evaluated stays per split" + (" and class" if kind ==
                                                                                      "multiclass" else ""))]
    acc = read_csv(run_dir / "accounting.csv")
    if acc is not None and len(acc):
        wide = acc.pivot_table(index=["cohort", "table"], columns="outcome", values="rows", aggfunc="sum", sort=False)
        wide.columns.name = None
        data.append(table_block(wide.reset_index(), heading="Row accounting of the input data", digits=0))
    blocks = _no_test_blocks(info)
    table = read_csv(run_dir / "comparison.csv", index_col=0)
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
            ("Run", str(cfg.get("name", run_dir.name)))]
    sections = [section("data", "Data and cohort", data), section("metrics", "Metrics with confidence intervals",
                                                                  blocks),
                section("limitations", "Limitations", [{"kind": "list", "items": notes}])]
    context = {"title": f"{cfg.get('name', run_dir.name)}: {kind} model report",
               "subtitle": f"Outcome {label['name']} · run {cfg.get('name', run_dir.name)}",
               "generated": f"Generated by healthfusion on {datetime.now():%Y-%m-%d %H:%M}",
               "card": card, "sections": sections}
    return write_report(context, out)


def build_report(run_dir: str | Path, out: str | Path | None = None, *, recompute_audit: bool = False,
                 explain: bool = False, identifiers: bool | None = None, console=None) -> Path:
    """Write ``out`` (default ``RUN_DIR/report.html``) for the run folder ``run_dir``; return its path.

    The report shows no patient identifier unless asked (stays are numbered per report) and no absolute path;
    counts and group statistics follow :mod:`~healthfusion.evaluation.disclosure`.

    Parameters
    ----------
    recompute_audit : bool
        Recompute ``audit/`` even if present (the folder is cleared first).
    explain : bool
        Compute ``explanations/`` when missing (needs the run's data, as named in ``config.yaml``).
    identifiers : bool, optional
        Show stay ids in the per-stay explanations (internal use only). Default: the run config's
        ``evaluation.report_identifiers`` (false).

    Raises
    ------
    ValueError
        If ``run_dir`` is not a run folder (no ``predictions.csv``), or the data for explanations cannot be read.
    RunFolderError
        If an artefact belongs to another model, was changed after the run wrote it, or was not written by the run
        (:func:`~healthfusion.workflows.runfolder.check_artefacts`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"Run folder {run_dir} does not exist.")
    out = Path(out) if out else run_dir / "report.html"
    study = study_kind(run_dir)
    if study is not None:
        return study_report(run_dir, out, study, identifiers=bool(identifiers))
    label = run_label(run_dir)
    if label is not None and label.get("kind", "binary") != "binary":
        return _kind_report(run_dir, out, label)
    metrics_path = run_dir / "metrics.json"
    no_test = metrics_path.is_file() and json.loads(metrics_path.read_text()).get("test_set") is False
    # a run without a test set has no held-out predictions to audit
    recompute = not no_test and (recompute_audit or not (run_dir / "audit" / "audit.json").is_file())
    if recompute:
        shutil.rmtree(run_dir / "audit", ignore_errors=True)  # derived from the predictions: rebuilt whole
    check_artefacts(run_dir)
    info = _load(run_dir)
    if recompute:
        audited = "ensemble" if "ensemble" in info["predictions"].columns else HYBRID
        audit = write_audit(run_dir, model=audited, n_boot=300)
        if (run_dir / MANIFEST).is_file():
            record_artefacts(run_dir, [p for p in artefact_files(run_dir) if p.startswith(f"{ARTEFACT_FOLDERS[0]}/")])
    elif (run_dir / "audit" / "audit.json").is_file():
        audit = json.loads((run_dir / "audit" / "audit.json").read_text())
    else:
        audit = {}
    if explain and not (run_dir / "explanations" / "summary.json").is_file():
        from healthfusion.workflows.explain import explain_run

        explain_run(run_dir, console=console)
    calibration = read_csv(run_dir / "audit" / "calibration.csv")
    sections = [_data_section(run_dir, info), *_metrics_sections(run_dir, info),
                _calibration_section(run_dir, calibration, audit), subgroup_section(run_dir, audit),
                explanation_section(run_dir, identifiers=_identifiers(info, identifiers)), _impact_section(run_dir),
                *filter(None, [alerts_section(run_dir)]),
                *_extra_sections(run_dir, out, identifiers=_identifiers(info, identifiers)),
                section("limitations", "Limitations", [{"kind": "list", "items": limitations(info, audit, calibration)}])]
    cfg = info["config"]
    synthetic = is_synthetic(info)
    tripod = tripod_items(info, audit, calibration, {s["id"] for s in sections})
    context = {"title": f"{cfg.get('name', run_dir.name)}: risk model report" + (" (synthetic data)" if synthetic else ""),
               "subtitle": f"Outcome {cfg.get('data', {}).get('label', '?')} · run {cfg.get('name', run_dir.name)}",
               "generated": f"Generated by healthfusion on {datetime.now():%Y-%m-%d %H:%M}",
               "notice": ("This report is about SYNTHETIC data generated by healthfusion to demonstrate the pipeline: "
                          "no real patient is in it and its numbers say nothing about any clinical population."
                          if synthetic else None),
               "card": card_rows(run_dir, info, audit),
               "card_blocks": [table_block(tripod, heading="TRIPOD+AI (2024) reporting items",
                                           caption="The items of the TRIPOD+AI statement that apply to a "
                                                   "development/validation study, each present in this report or "
                                                   "not applicable to this run.")],
               "sections": sections}
    return write_report(context, out)


def _identifiers(info: dict, asked: bool | None) -> bool:
    """Whether the report shows stay ids: as asked, else the run config's ``evaluation.report_identifiers``."""
    if asked is not None:
        return asked
    return bool((info["config"].get("evaluation") or {}).get("report_identifiers", False))
