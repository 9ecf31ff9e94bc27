"""``healthfusion predict``: score raw files of any supported source with a saved model folder.

The model is loaded through :func:`healthfusion.models.scoring.load_model` (every file checked against its
``model.json``) and the files are read with the source options the model was trained with (prediction window,
minimum stay, lab timing, positive class, ...): a 48-hour model is scored on 48 hours whatever the reader's default.
An option given here that contradicts the saved one is an error. Output: one row per stay/image with its id, the
calibrated probability, the risk group by the saved rule and a status (``ok`` or why the stay could not be scored,
its probability then empty, never a default value); multiclass and regression models give their own columns (see
:mod:`healthfusion.models.scoring`). When the source carries the model's label, it is added as ``y_true`` for
external validation.
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
from healthfusion.evaluation.calibration import calibration_with_ci
from healthfusion.models.scoring import OK, PredictionError, ScoringModel, load_model
from healthfusion.workflows.evaluate import display_comparison, kind_comparison_table

log = logging.getLogger(__name__)

__all__ = ["PredictionError", "external_validation", "predict_source"]


def predict_source(model_dir: str | Path, source: str, path: str | Path, split: str | None = None,
                   **options) -> pd.DataFrame:
    """Score the stays of ``source`` files at ``path`` with the model folder ``model_dir`` (a run's ``model/``, an
    ensemble or one of its members).

    ``split`` selects a named split of sources that have them (e.g. MedMNIST ``train``/``val``/``test``);
    ``options`` are further reader options that select data (e.g. ``n_stays`` of the synthetic source). The frame's
    ``attrs["threshold"]`` is the model's risk-group threshold, ``attrs["model"]`` a one-line description of what
    was applied.

    Raises
    ------
    ModelLoadError
        Not a model folder (a run folder names its ``model/``), a folder saved by an earlier healthfusion, any file
        changed or corrupted since saving.
    SourceError, PredictionError
        Unreadable or empty input, an option that contradicts the model's, variables that do not match.
    """
    model = load_model(model_dir)
    saved = model.data_options if source == model.data_source else {}
    if source != model.data_source:
        log.warning("Scoring %s files with a model trained on %s; its reader options %s are not applied.",
                    source, model.data_source, model.data_options)
    conflicts = {k: (v, saved[k]) for k, v in options.items() if k in saved and saved[k] != v}
    if conflicts:
        detail = "; ".join(f"{k}={given!r} but the model was trained with {k}={kept!r}"
                           for k, (given, kept) in conflicts.items())
        raise PredictionError(f"{detail}. The model's own options are applied when scoring; drop the option(s).")
    read = {**saved, **options, **({"split": split} if split is not None else {})}
    cohort = get_source(source)(path, **read)
    if len(cohort) == 0:
        raise SourceError(f"The {source} input at {path} holds no stays; nothing to score.")
    shared = count_development_patients(Path(model_dir).parent, cohort.stays["patient_id"])
    if shared:
        log.warning("%d patient(s) of the %s input also had stays the model was trained or tuned on (by the run "
                    "folder's %s): metrics on them are optimistic, not an external validation.", shared, source,
                    DEVELOPMENT_PATIENTS_FILE)
    out = _with_label(model.predict(cohort), model, cohort)
    out.attrs["threshold"] = model.threshold
    calibrator = model.calibrator.method if model.calibrator is not None else "none"
    out.attrs["model"] = (f"{model.kind} model {model.card['fingerprint'][:12]}: reader options {read}, calibrator "
                          f"{calibrator}, high risk at probability >= {model.threshold:g}")
    return out


def _with_label(out: pd.DataFrame, model: ScoringModel, cohort: Cohort) -> pd.DataFrame:
    """``out`` with the model's label as ``y_true`` when the source carries it (external validation)."""
    label = model.label.name
    if cohort.labels is not None and label in cohort.labels.columns:
        out["y_true"] = cohort.label(label).reindex(out["stay_id"]).to_numpy()
    return out


def external_validation(frame: pd.DataFrame, threshold: float = 0.5, n_boot: int = 500,
                        seed: int = 0) -> tuple[pd.DataFrame, str] | None:
    """Metrics with bootstrap 95% CIs of a :func:`predict_source` output that carries ``y_true`` (the input had the
    model's label), on its scored, labelled rows, as a table to print and its title; None without labels (or with
    a single class, where the binary and multiclass metrics are undefined).

    Binary: the threshold metrics, AUROC, AUPRC, Brier, ECE and the calibration slope and intercept; multiclass
    (``p_<class>`` columns): accuracy, macro-F1
    and macro AUROC; regression (``prediction``): MAE, RMSE and R².
    """
    if "y_true" not in frame.columns:
        return None
    rows = frame[(frame["status"] == OK) & frame["y_true"].notna()]
    title = f"External validation (labels found in the input; n = {len(rows)})"
    if "probability" in rows.columns:
        if rows["y_true"].nunique() != 2:
            return None
        y, p = rows["y_true"].to_numpy(dtype=float), rows["probability"].to_numpy(dtype=float)
        table = pd.concat([metrics_with_ci(y, p, threshold, n_boot=n_boot, seed=seed),
                           calibration_with_ci(y, p, n_boot=n_boot, seed=seed)], ignore_index=True)
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
