"""``healthfusion predict``: score raw files of any supported source with a saved model.

The saved preprocessing is applied unchanged (no refitting). Output: one row per stay/image with its id, the
probability, the risk group at the threshold (``high`` if probability >= threshold) and a status; a stay with no
usable data for any of the model's modalities gets status ``no usable data`` and an empty probability, never a
default value. When the source carries the model's label, it is added as ``y_true`` for external validation.

A model of a multiclass label gives ``predicted_class`` and one ``p_<class>`` probability column per class instead
of ``probability``/``risk_group``; a model of a regression label gives ``prediction``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source
from healthfusion.data.splits import DEVELOPMENT_PATIENTS_FILE, count_development_patients
from healthfusion.evaluation.bootstrap import metrics_with_ci
from healthfusion.evaluation.compare import risk_groups
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.models import load_model
from healthfusion.training import Trainer
from healthfusion.workflows.ensemble import RunEnsemble, is_ensemble_folder
from healthfusion.workflows.evaluate import display_comparison, kind_comparison_table

log = logging.getLogger(__name__)


class PredictionError(ValueError):
    """The input cannot be scored by this model (mismatched variables, empty input)."""


def _check_compatible(feat: CohortFeaturizer, cohort: Cohort, source: str) -> None:
    tables = {"ts": "events", "static": "static", "codes": "codes", "text": "notes", "image": "images"}
    usable = [m for m in feat.modalities if cohort.has(tables[m])]
    if not usable:
        raise PredictionError(f"The {source} input has none of the model's modalities {list(feat.modalities)}.")
    ts = feat.transformers_.get("ts")
    if ts is not None and cohort.has("events"):
        seen = set(cohort.read_table("events", columns=["variable"])["variable"].unique())
        overlap = [v for v in ts.variables_ if v in seen]
        if not overlap:
            raise PredictionError(
                f"None of the model's {len(ts.variables_)} time-series variables (e.g. {ts.variables_[:5]}) occur "
                f"in the {source} input (which has e.g. {sorted(seen)[:5]}); was the model trained on another source?"
            )
        missing = [v for v in ts.variables_ if v not in seen]
        if missing:
            log.warning("Variables %s of the model never occur in the input; they are treated as unobserved.", missing)
    st = feat.transformers_.get("static")
    if st is not None and cohort.has("static"):
        absent = [c for c in st.numeric_ + st.categorical_ if c not in cohort.static.columns]
        if absent:
            raise PredictionError(f"The {source} input lacks the model's static feature column(s) {absent}.")


def predict_source(model_dir: str | Path, source: str, path: str | Path, split: str | None = None,
                   threshold: float = 0.5, **options) -> pd.DataFrame:
    """Score the stays of ``source`` files at ``path`` with the model saved in ``model_dir`` (a single model, or
    an ensemble folder a run with an ``ensemble`` section writes).

    ``split`` selects a named split of sources that have them (e.g. MedMNIST ``train``/``val``/``test``).

    Raises
    ------
    ModelLoadError
        Missing or corrupted model folder (truncated weights, edited config, preprocessing from another model).
    SourceError, PredictionError
        Unreadable input, empty input, or variables that do not match the model's.
    """
    ensemble = RunEnsemble.load(model_dir) if is_ensemble_folder(model_dir) else None
    if ensemble is not None:
        feat = ensemble.featurizer
    else:
        model, state = load_model(model_dir)
        if state is None:
            raise PredictionError(f"{model_dir} has no preprocessing.json; save models with their preprocessing "
                                  "state.")
        feat = CohortFeaturizer.from_state(state)
    if split is not None:
        options["split"] = split
    cohort = get_source(source)(path, **options)
    if len(cohort) == 0:
        raise SourceError(f"The {source} input at {path} holds no stays; nothing to score.")
    shared = count_development_patients(Path(model_dir).parent, cohort.stays["patient_id"])
    if shared:
        log.warning("%d patient(s) of the %s input also had stays the model was trained or tuned on (by the run "
                    "folder's %s): metrics on them are optimistic, not an external validation.", shared, source,
                    DEVELOPMENT_PATIENTS_FILE)
    _check_compatible(feat, cohort, source)
    ids = cohort.stay_ids.tolist()
    data = feat.transform(cohort, ids, with_target=False)
    kind = feat.label_spec_.kind if feat.label_spec_ else "binary"
    if ensemble is None and kind != "binary":
        return _with_label(_predict_other_kind(model, feat, data, ids), feat, cohort, ids)
    out = pd.DataFrame({"stay_id": ids, "probability": np.nan, "risk_group": "", "status": "no usable data"})
    if ensemble is not None:
        prob = ensemble.predict_proba(cohort, ids, data)  # NaN where the hybrid has none of its modalities
        present = ~np.isnan(prob)
        prob = prob[present]
    else:
        present = data.usable_rows()  # the wide input (summary) is part of static, not a modality of its own
        if present.any():
            prob = Trainer().predict(model, data[present], head_kind=kind)
    if present.any():
        out.loc[present, "probability"] = prob
        out.loc[present, "risk_group"] = risk_groups(prob, threshold)
        out.loc[present, "status"] = "scored"
    return _with_label(out, feat, cohort, ids)


def _predict_other_kind(model, feat: CohortFeaturizer, data, ids: list[str]) -> pd.DataFrame:
    """Rows of a multiclass (``predicted_class``, ``p_<class>``) or regression (``prediction``) model's output."""
    spec = feat.label_spec_
    present = data.usable_rows()
    out = pd.DataFrame({"stay_id": ids})
    pred = Trainer().predict(model, data[present], head_kind=spec.kind) if present.any() else None
    if spec.kind == "multiclass":
        classes = list(spec.classes)
        chosen = pd.Series(None, index=out.index, dtype=object)
        probs = np.full((len(ids), len(classes)), np.nan)
        if pred is not None:
            chosen[present] = np.asarray(classes, dtype=object)[pred.argmax(axis=1)]
            probs[present] = pred
        out["predicted_class"] = chosen
        for k, c in enumerate(classes):
            out[f"p_{c}"] = probs[:, k]
    elif spec.kind == "regression":
        out["prediction"] = np.nan
        if pred is not None:
            out.loc[present, "prediction"] = pred
    else:
        raise PredictionError(f"Scoring a model of a {spec.kind} label ({spec.name!r}) is not supported here.")
    out["status"] = np.where(present, "scored", "no usable data")
    return out


def _with_label(out: pd.DataFrame, feat: CohortFeaturizer, cohort: Cohort, ids: list[str]) -> pd.DataFrame:
    """``out`` with the model's label as ``y_true`` when the source carries it (external validation)."""
    label = feat.label_spec_.name if feat.label_spec_ else None
    if label and cohort.labels is not None and label in cohort.labels.columns:
        out["y_true"] = cohort.label(label).reindex(ids).to_numpy()
    return out


def external_validation(frame: pd.DataFrame, threshold: float = 0.5, n_boot: int = 500,
                        seed: int = 0) -> tuple[pd.DataFrame, str] | None:
    """Metrics with bootstrap 95% CIs of a :func:`predict_source` output that carries ``y_true`` (the input had the
    model's label), on its scored, labelled rows, as a table to print and its title; None without labels (or with
    a single class, where the binary and multiclass metrics are undefined).

    Binary: the threshold metrics, AUROC, AUPRC and Brier; multiclass (``p_<class>`` columns): accuracy, macro-F1
    and macro AUROC; regression (``prediction``): MAE, RMSE and R².
    """
    if "y_true" not in frame.columns:
        return None
    rows = frame[(frame["status"] == "scored") & frame["y_true"].notna()]
    title = f"External validation (labels found in the input; n = {len(rows)})"
    if "probability" in rows.columns:
        if rows["y_true"].nunique() != 2:
            return None
        table = metrics_with_ci(rows["y_true"].to_numpy(dtype=float), rows["probability"].to_numpy(), threshold,
                                n_boot=n_boot, seed=seed)
        return table, title
    if "prediction" in rows.columns:
        results = {"model": (rows["y_true"].to_numpy(dtype=float), rows["prediction"].to_numpy(dtype=float))}
        kind = "regression"
    else:
        classes = [c.removeprefix("p_") for c in rows.columns if c.startswith("p_")]
        y = pd.Index(classes).get_indexer(rows["y_true"].astype(str))
        if (y < 0).any() or len(np.unique(y)) < 2:
            return None
        results = {"model": (y, rows[[f"p_{c}" for c in classes]].to_numpy(dtype=float))}
        kind = "multiclass"
    shown, _ = display_comparison(kind_comparison_table(kind, results, n_boot=n_boot, seed=seed))
    return shown, title
