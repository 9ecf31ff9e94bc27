"""The report's model card: what the model is, the data it was developed and evaluated on, its intended use, and
the TRIPOD+AI (2024) reporting items that apply to a development/validation study, each marked present or not
applicable with where the report answers it.

``healthfusion train`` records the facts the card needs that a run folder would otherwise lose (the cohort's
source and description, the label's definition, stays, patients and events per split) as ``metrics.json["data"]``
(:func:`data_facts`); counts are shared counts (:func:`~healthfusion.evaluation.disclosure.count_cell`). The card
names no absolute path of the machine the run was made on (:func:`shown_path`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.evaluation.compare import format_ci
from healthfusion.evaluation.disclosure import RULE, SUPPRESSED, count_cell

PRESENT, NOT_APPLICABLE = "present", "not applicable"
_MODALITIES = {"ts": "time series (LSTM)", "static": "static features (MLP)", "codes": "codes", "text": "notes",
               "image": "images (CNN)"}


def data_facts(main: Cohort, cohorts: dict[str, Cohort], ids: dict[str, list[str]], label: str) -> dict:
    """What the model card needs to know about a run's data: the cohort's (and an external test cohort's) name,
    source and description, the label's description, and per split the stays, patients and events (shared
    counts)."""
    def cohort_facts(cohort: Cohort) -> dict:
        return {"name": cohort.meta.name, "source": cohort.meta.source, "description": cohort.meta.description}

    splits = {}
    for split, stay_ids in ids.items():
        stays = cohorts[split].stays.set_index("stay_id").reindex(stay_ids)
        y = pd.to_numeric(cohorts[split].label(label).reindex(stay_ids), errors="coerce")
        splits[split] = {"stays": count_cell(len(stay_ids)), "patients": count_cell(stays["patient_id"].nunique()),
                         "events": count_cell(y.sum())}
    spec = main.meta.label(label)
    facts = {"cohort": cohort_facts(main), "label": {"name": label, "kind": spec.kind,
                                                     "description": getattr(spec, "description", None)},
             "splits": splits}
    if cohorts.get("test") is not None and cohorts["test"] is not main:
        facts["test_cohort"] = cohort_facts(cohorts["test"])
    return facts


def is_synthetic(info: dict) -> bool:
    """True when the run's data came from healthfusion's synthetic source (recorded facts, or the config)."""
    facts = info["metrics"].get("data") or {}
    sources = [(facts.get(k) or {}).get("source") for k in ("cohort", "test_cohort")]
    data = info["config"].get("data", {}) or {}
    return "synthetic" in sources or data.get("source") == "synthetic"


def shown_path(value: object) -> str:
    """A data path as the card shows it: a path inside the run folder as recorded (relative to it); any other
    (one that climbs out of the run folder, or an absolute path of a run written before paths were made relative)
    by its last component only, so the report tells nothing about the machine's folders."""
    if value in (None, ""):
        return "?"
    path = Path(str(value))
    return path.name if path.is_absolute() or ".." in path.parts else path.as_posix()


def _source_text(spec: dict | list | None) -> str:
    if isinstance(spec, list):  # data.test as a list: each scored on its own
        return "; ".join(_source_text(s) for s in spec) + " (each also scored on its own)"
    spec = spec or {}
    if spec.get("sources"):
        return "pooled: " + " + ".join(_source_text(s) for s in spec["sources"])
    if spec.get("cohort"):
        return f"cohort folder {shown_path(spec['cohort'])}"
    return f"{spec.get('source')} files ({shown_path(spec.get('path'))})"


def _size_text(metrics: dict) -> str:
    """``n = 300, prevalence 0.130``; the prevalence only when it rests on at least 10 events."""
    n, prevalence = metrics.get("n"), metrics.get("prevalence")
    if n is None or prevalence is None:
        return f"n = {n if n is not None else '?'}"
    events = count_cell(n * prevalence)
    return f"n = {n}, " + (f"prevalence {prevalence:.3f}" if events != SUPPRESSED else f"events {SUPPRESSED}")


def card_rows(run_dir: Path, info: dict, audit: dict) -> list[tuple[str, str]]:
    """The model card's (label, value) rows."""
    cfg, model, metrics = info["config"], info["model"], info["metrics"]
    data, facts = cfg.get("data", {}) or {}, metrics.get("data") or {}
    label = data.get("label", "the outcome")
    mods = [m for m in _MODALITIES if model.get(m)]
    test = data.get("test")
    test_text = (f"external test set: {_source_text(test)}" if test
                 else "held-out test split of the same cohort (patient-level)")
    ensemble = metrics.get("ensemble")
    headline = audit.get("model", "hybrid")
    comparison = metrics.get("comparison", {}).get(headline, {})
    described = (f"{model.get('model_type', 'hybrid')} fusion model ({model.get('fusion', '?')} fusion) over "
                 + (", ".join(_MODALITIES[m] for m in mods) or "?"))
    if ensemble:
        weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(ensemble["members"], ensemble["weights"], strict=True))
        described = (f"ensemble of the {described} (logits of {len(ensemble['seeds'])} seeds averaged)"
                     + (f" and gradient boosting on engineered features; weights {weights} ("
                        + _weights_text(ensemble) + ")"
                        if len(ensemble["members"]) > 1 else ""))
    cohort = facts.get("cohort") or {}
    card = [
        ("Model", described),
        ("Predicts", f"probability of {label!r} from data recorded up to each stay's prediction time"),
        ("Intended use", "decision support for clinicians and quality teams: flag stays at high risk of "
                         f"{label!r} for review, in populations like the training cohort; a second opinion, "
                         "never a replacement for clinical judgement."),
        ("Not intended for", "automated decisions without review; patients or settings unlike the training cohort "
                             "(other ages, units, sites or time periods) without local validation; causal claims "
                             "about individual variables."),
        ("Training data", f"{_source_text(data)}" + (f" ({cohort['name']}: {cohort['description']})"
                                                      if cohort.get("description") else "") + f"; label {label!r}"),
        ("Evaluation", f"{test_text}; " + _size_text(metrics)),
        ("Headline result", format_ci(comparison.get("auroc", float("nan")), comparison.get("auroc_ci_low", float("nan")),
                                      comparison.get("auroc_ci_high", float("nan")))
                            + f" AUROC (95% bootstrap CI), {headline}"),
        ("Operating point", f"{audit.get('threshold', float('nan')):.3f} (chosen on the validation stays)"),
        ("Run", str(cfg.get("name", run_dir.name))),
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


def tripod_items(info: dict, audit: dict, calibration: pd.DataFrame | None, sections: set[str]) -> pd.DataFrame:
    """The TRIPOD+AI (Collins et al., BMJ 2024) topics of a development/validation study, one row each:
    ``item``, ``status`` (present / not applicable), ``in this report`` (what answers it, and where).
    ``sections`` are the ids of the report's sections (an item whose section is missing is not present)."""
    cfg, metrics = info["config"], info["metrics"]
    data, facts = cfg.get("data", {}) or {}, metrics.get("data") or {}
    features, training = cfg.get("features", {}) or {}, cfg.get("training", {}) or {}
    splits = facts.get("splits") or {}
    sizes = "; ".join(f"{s}: {v['stays']} stays, {v['patients']} patients, {v['events']} events"
                      for s, v in splits.items()) or f"test: {metrics.get('n', '?')} stays"
    label = (facts.get("label") or {})
    cohort = facts.get("cohort") or {}
    comparison = metrics.get("comparison", {}).get(audit.get("model", "hybrid"), {})
    rows = [
        ("Source of data", PRESENT, f"{_source_text(data)}"
         + (f": {cohort.get('description')}" if cohort.get("description") else "") + " (model card, Data)"),
        ("Participants: setting and eligibility", PRESENT,
         "every stay of the cohort with the label; input rows used or dropped with a reason (Data: row accounting); "
         "split by patient, so no patient is in two splits"),
        ("Outcome: definition and timing", PRESENT,
         f"{label.get('name', data.get('label', '?'))!r}"
         + (f": {label['description'].rstrip('.')}" if label.get("description") else "")
         + "; predicted at each stay's prediction time"),
        ("Predictors: definition and timing", PRESENT,
         f"modalities {features.get('modalities', '?')}; time series over the {features.get('hours', '?')} h before "
         "the prediction time, nothing recorded after it (Explanations: the variables)"),
        ("Sample size", PRESENT, sizes + "; fixed by the data available, not calculated in advance"),
        ("Missing data", PRESENT,
         "kept visible, not dropped: time series carry an observation mask and the last value forward (training "
         "mean before the first); numeric static features are mean-imputed with a missing indicator; a missing "
         "category is its own level; a stay without any modality gets no score and is counted"),
        ("Analysis: model, tuning and internal validation", PRESENT,
         f"early stopping on the validation AUROC (patience {training.get('patience', '?')}); "
         + ("hyperparameters by cross-validation on the training stays; " if cfg.get("tuning") else "")
         + "test stays scored once (Metrics, Baseline comparison)"),
        ("Class imbalance", PRESENT, f"training.imbalance: {training.get('imbalance', '?')}"),
        ("Performance with confidence intervals",
         PRESENT if comparison else NOT_APPLICABLE,
         "AUROC, AUPRC, Brier and threshold metrics with percentile-bootstrap 95% CIs (Metrics)" if comparison
         else "no comparison table in this run folder"),
    ]
    if calibration is not None and "calibration" in sections:
        rows.append(("Calibration", PRESENT, "ECE, Brier, slope and intercept with 95% CIs, reliability diagram "
                                             "(Calibration)"))
    else:
        rows.append(("Calibration", NOT_APPLICABLE, audit.get("recalibration_note", "no calibration audit")))
    if "subgroup_note" in audit:
        rows.append(("Fairness", NOT_APPLICABLE, audit["subgroup_note"]))
    else:
        rows.append(("Fairness", PRESENT, f"metrics per subgroup with CIs and gaps between groups ({RULE}) "
                                          "(Subgroups and fairness)"))
    rows += [
        ("Model output and risk groups", PRESENT, f"probability; high risk at or above "
                                                  f"{audit.get('threshold', float('nan')):.3f}, chosen on the "
                                                  "validation stays (model card; Impact analysis)"),
        ("Development vs evaluation data",
         PRESENT if data.get("test") else NOT_APPLICABLE,
         "external test cohort; its differences show in the Data section" if data.get("test")
         else "the test stays are a held-out patient-level split of the development cohort"),
        ("Model updating", NOT_APPLICABLE, "a development/validation study: the model is not updated"),
        ("Limitations", PRESENT if "limitations" in sections else NOT_APPLICABLE, "Limitations"),
        ("Intended use and users", PRESENT, "model card: Intended use, Not intended for"),
        ("Code and configuration", PRESENT, "config.yaml in the run folder re-runs the study with healthfusion"),
    ]
    return pd.DataFrame(rows, columns=["item", "status", "in this report"])


def _weights_text(ensemble: dict) -> str:
    """How an ensemble's weights were chosen, from ``metrics.json``'s ``ensemble`` entry."""
    source = ensemble["weights_from"]
    if source == "uniform":
        return "equal"
    how = ("by a non-negative logistic regression (stacking)" if ensemble.get("fit_info", {}).get("method") ==
           "stacking" else "by log-loss")
    where = {"validation": "on the validation stays", "cross_fit": "on cross-fitted predictions"}.get(source, source)
    return f"chosen {how} {where}"
