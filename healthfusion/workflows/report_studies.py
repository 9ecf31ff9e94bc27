"""The report of a study run folder (``healthfusion transfer``, ``multitask`` or ``federate``): the settings card,
a headline section (the study's main table with CIs and its key figure), every other table with a caption saying
what its columns mean (long tables cut to their first rows, naming the file that has all), the figures and the
limitations. Small cells are suppressed (:mod:`healthfusion.evaluation.disclosure`); per-stay predictions are never
part of it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from healthfusion.evaluation.disclosure import RULE, SUPPRESSED, suppress_small_rows
from healthfusion.report.html import write_report
from healthfusion.workflows.report_sections import figure_block, pseudonymise, read_csv, section, table_block
from healthfusion.workflows.runfolder import check_artefacts

_STUDIES = {
    "transfer": ("gains.csv", ("summary.csv", "gains.csv", "shift.csv", "shap/global_importance.csv",
                               "shap/top_features.csv", "results.csv")),
    "multitask": ("tasks.csv", ("tasks.csv", "tim_attention.csv", "tim_ablation.csv", "tim_retrain.csv",
                                "comparison.csv")),
    "federate": ("rounds.csv", ("summary.csv", "sites.csv", "rounds.csv", "site_metrics.csv")),
}
_STUDY_TITLES = {"transfer": "cross-domain transfer", "multitask": "multitask (M3H)", "federate": "federated learning"}
#: the tables and figures a study's report leads with; the rest follow, long tables cut to their first rows
_STUDY_LEAD = {"transfer": (("gains.csv", "summary.csv"), ("learning_curve.png",)),
               "multitask": (("tasks.csv",), ("tim_attention.png",)),
               "federate": (("summary.csv",), ())}
#: rows of a table shown in the report; a longer table shows its first rows and names the file that has them all
STUDY_TABLE_ROWS = 20
#: what the columns of a study's tables mean (the caption under each)
_STUDY_CAPTIONS = {
    "gains.csv": "Gain of each adapted strategy over the bar (the better of source-only and pooled) at each labelled "
                 "target size: mean AUROC difference on the target test stays, paired by seed, with its 95% CI over "
                 "seeds; wins = seeds where the strategy beat the bar.",
    "summary.csv": "Per strategy (and labelled target size): mean over seeds of the target test AUROC with its 95% CI "
                   "over seeds, calibration (ECE, slope, intercept), AUPRC and F1; n_test and n_test_positive are the "
                   "smallest test set over seeds.",
    "shift.csv": "Per input variable, source vs target stays, largest shift first: smd = standardised mean difference "
                 "(target - source, over the pooled SD), ks = Kolmogorov-Smirnov statistic with its p-value, the two "
                 "means and the stays with a value on each side.",
    "tasks.csv": "Per task: the main metric of the multitask model (bootstrap 95% CI on the test stays) beside the "
                 "single-task models' mean over seeds, the relative improvement (95% CI over seeds) and how much of "
                 "the task's representation comes from itself (self_weight).",
    "tim_attention.csv": "Task-interdependence from attention: the share of task i's representation (row) taken from "
                         "task j (column); the diagonal is the task itself.",
    "results.csv": "One row per strategy, labelled target size and seed: the target test metrics of that run.",
    ("federate", "summary.csv"): "One row per setting (the federated strategy, its personalised variant, the pooled "
                                 "model, one local-only model per site): mean over sites of test accuracy at 0.5, "
                                 "AUROC and calibration (ECE, slope, intercept) with bootstrap 95% CIs over all "
                                 "sites' test stays; every row scored calibrated by its temperature (the federated "
                                 "average for the strategy; fitted on the validation stays each reference may see).",
    "rounds.csv": "One row per federated round: the sites that took part, whether the round was aggregated and "
                  "the samples it aggregated.",
}
#: columns that name a row of a study's tables (shown when the row's numbers are suppressed)
_STUDY_KEYS = ("seed", "size", "strategy", "status", "n_seeds", "n_labelled", "n_target_train", "n_target_val",
               "task", "kind", "metric", "model", "bar", "higher_is_better")
#: per-stay outputs of a study, never part of its report
_STUDY_PRIVATE = ("predictions.csv",)


def study_kind(run_dir: Path) -> str | None:
    """``"transfer"``, ``"multitask"`` or ``"federate"`` for a run folder of `healthfusion transfer` / `multitask` /
    `federate`, else None."""
    for kind, (marker, _) in _STUDIES.items():
        if (run_dir / marker).is_file() and not (run_dir / "audit").is_dir():
            return kind
    return None


def _federated_card(run_dir: Path, cfg: dict) -> list[tuple[str, str]]:
    """Card rows of a federated run: strategy and rounds, sites, calibration and each site's DP budget."""
    fed = cfg.get("federated", {})
    strategy = fed.get("aggregation", "fedavg")
    if fed.get("server_optimizer", "none") != "none":
        strategy = f"fed{fed['server_optimizer']}"
    elif fed.get("proximal_mu"):
        strategy = f"fedprox (mu {fed['proximal_mu']})"
    rows = [("Strategy", f"{strategy}, {fed.get('rounds', '?')} rounds"
             + (f", then {fed['personalize_epochs']} local fine-tuning epochs" if fed.get("personalize_epochs") else ""))]
    rounds = read_csv(run_dir / "rounds.csv")
    if rounds is not None:
        failed = int((rounds["failed"].astype(str) != "{}").sum()) if "failed" in rounds else 0
        rows.append(("Rounds", f"{len(rounds)} recorded, {int(rounds['aggregated'].sum())} aggregated, "
                               f"{failed} with a failed site"))
        if "server_epsilon" in rounds and rounds["server_epsilon"].notna().any():
            dp = fed.get("server_privacy") or {}
            rows.append(("Server-side DP", f"site-level epsilon {rounds['server_epsilon'].dropna().iloc[-1]:.2f} at "
                                           f"delta {dp.get('delta', '?')} (updates clipped to {dp.get('clip_norm')}, "
                                           f"noise multiplier {dp.get('noise_multiplier')})"))
    sites = read_csv(run_dir / "sites.csv")
    if sites is not None:
        rows.append(("Sites", ", ".join(f"{r.site} (train {r.n_train}, test {r.n_test})" for r in sites.itertuples())))
        temps = sites["temperature"].dropna() if "temperature" in sites else []
        rows.append(("Calibration", "none (no validation stays with both outcomes)" if not len(temps) else
                     "temperature, the validation-size-weighted geometric mean of the sites' own ("
                     + ", ".join(f"{r.site} {r.temperature:.2f}" for r in sites.dropna(subset=["temperature"])
                                 .itertuples()) + ")"))
        if "epsilon" in sites:
            rows.append(("Differential privacy", "per-site DP-SGD (Opacus RDP accountant): "
                         + ", ".join(f"{r.site} epsilon {r.epsilon:.2f} at delta {r.delta:.1e}"
                                     for r in sites.itertuples())))
    return rows


def study_report(run_dir: Path, out: Path, kind: str, identifiers: bool = False) -> Path:
    """The report of a transfer or multitask run folder: its settings, every table (in a useful order) and
    figure it wrote. Refuses (RunFolderError) artefacts that are not the run's models' own."""
    import yaml

    check_artefacts(run_dir)

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    cfg = cfg or {}
    data = cfg.get("data", {})
    card = [("Study", _STUDY_TITLES[kind]), ("Run", str(cfg.get("name", run_dir.name)))]
    if data.get("label"):
        card.append(("Outcome", str(data["label"])))
    if kind == "transfer":
        domain = cfg.get("domain", {})
        card.append(("Domains", f"{domain.get('column', '?')}: target {domain.get('target', '?')}, source "
                                f"{domain.get('source') or 'the rest'}"))
        protocol = cfg.get("protocol", {})
        card.append(("Protocol", f"target sizes {protocol.get('sizes', '?')} x seeds {protocol.get('seeds', '?')}; "
                                 f"strategies {cfg.get('strategies', '?')}"))
    elif kind == "federate":
        card += _federated_card(run_dir, cfg)
    else:
        card.append(("Tasks", ", ".join(f"{t.get('name')} ({t.get('kind')})" for t in cfg.get("tasks", []))))
        card.append(("Seeds", str(cfg.get("comparison", {}).get("seeds", "?"))))
    lead_tables, lead_figures = _STUDY_LEAD[kind]
    order = [*lead_tables, *(n for n in _STUDIES[kind][1] if n not in lead_tables)]
    tables = [run_dir / name for name in order if (run_dir / name).is_file()]
    tables += sorted(p for p in run_dir.rglob("*.csv") if p not in tables and "models" not in p.parts
                     and p.parts[len(run_dir.parts)] not in ("model", "cohort"))
    tables = [p for p in tables if p.relative_to(run_dir).as_posix() not in _STUDY_PRIVATE]
    headline, blocks, small = [], [], False
    for path in tables:
        frame = pseudonymise(suppress_small_rows(pd.read_csv(path), keep=_STUDY_KEYS), identifiers)
        small = small or bool(frame.isin([SUPPRESSED]).any().any())
        rel = path.relative_to(run_dir).as_posix()
        lead = rel in lead_tables
        (headline if lead else blocks).extend(_study_table(frame, rel, cut=not lead, kind=kind))
    # a figure drawn from the test results cannot hide a suppressed cell: left out when any row was suppressed
    hidden = ("learning_curve.png",) if small else ()
    pictures = [p for p in sorted(run_dir.rglob("*.png")) if "models" not in p.parts and p.name not in hidden]
    headline += [figure_block(p, p.relative_to(run_dir).as_posix()) for p in pictures if p.name in lead_figures]
    figures = [figure_block(p, p.relative_to(run_dir).as_posix()) for p in pictures if p.name not in lead_figures]
    sections = [section("headline", "Headline results", headline), section("results", "All tables", blocks)]
    if figures:
        sections.append(section("figures", "Figures", [{"kind": "figures", "figures": figures}]))
    suppression = (f"Small-cell suppression: {RULE} (a row of results is the group of test stays it was computed "
                   "on); per-stay predictions are not part of the report."
                   + (" The learning curve is not shown: some of its points rest on such rows." if hidden else ""))
    notes = [f"Numbers are from the run folder {run_dir.name} as written by `healthfusion {kind}`; intervals over seeds "
             "are Student-t intervals, per-run intervals are bootstrap intervals on that run's test stays.",
             "Model selection used training and validation stays only; the test stays were scored once.", suppression]
    if kind == "federate":
        notes = [f"Numbers are from the run folder {run_dir.name} as written by `healthfusion federate`: "
                 "mean_client_accuracy is the mean over sites of test accuracy at 0.5; AUROC intervals are bootstrap "
                 "intervals over all sites' test stays; site_metrics.csv scores the global model on each site's test "
                 "stays after the rounds listed.",
                 "The feature pipeline was fitted on the union of the sites' training stays (the one step not "
                 "federated); the calibration temperature is the federated average of the sites' own.",
                 "With differential privacy, epsilon covers each site's local training over all rounds (Opacus RDP "
                 "accountant); the personalisation epochs and the calibration are not covered.", suppression]

    sections.append(section("limitations", "Limitations", [{"kind": "list", "items": notes}]))
    context = {"title": f"{cfg.get('name', run_dir.name)}: {_STUDY_TITLES[kind]} report",
               "subtitle": f"run {cfg.get('name', run_dir.name)}",
               "generated": f"Generated by healthfusion on {datetime.now():%Y-%m-%d %H:%M}",
               "card": card, "sections": sections}
    return write_report(context, out)


def _study_table(frame: pd.DataFrame, rel: str, cut: bool, kind: str | None = None) -> list[dict]:
    """Report blocks of the study table ``rel`` of a ``kind`` run: the table with the caption saying what its columns
    mean (the kind's own caption where two kinds write a file of the same name); with ``cut``, a table longer than
    :data:`STUDY_TABLE_ROWS` shows its first rows and names the file that has all."""
    caption = _STUDY_CAPTIONS.get((kind, rel), _STUDY_CAPTIONS.get(rel))
    if cut and len(frame) > STUDY_TABLE_ROWS:
        more = (f"The first {STUDY_TABLE_ROWS} of {len(frame):,} rows (in the file's order); {rel} in the run folder "
                "has them all.")
        caption = f"{caption} {more}" if caption else more
        frame = frame.head(STUDY_TABLE_ROWS)
    return [table_block(frame, caption=caption, heading=rel)]
