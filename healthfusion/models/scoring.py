"""The one scoring entry point: load a run's model folder and score a cohort with everything saved in it.

::

    from healthfusion.models.scoring import load_model
    m = load_model("runs/x/model")         # hybrid, ensemble, an ensemble member (hybrid-seed0/, gradient_boosting/)
    cohort = get_source(m.data_source)(path, **m.data_options)   # the stays built as in training
    frame = m.predict(cohort)              # stay_id, probability, risk_group, status (binary)
    m.info()                               # kind, fingerprint, label, threshold, calibrator, training summary

Every file the loader reads is checked against ``model.json`` (:mod:`healthfusion.models.folder`) first. Scoring
applies, in order: the saved feature pipeline, the network(s) or trees, the saved calibrator, then the saved
risk-group rule (``high`` if the calibrated probability >= the saved threshold, else ``low``). ``predict`` takes no
option that could contradict the model; where the cohort differs from the training stays (a variable never seen, a
static column missing, other prediction times, another source) it logs one line saying so.

Output columns by label kind: binary ``stay_id, probability, risk_group, status``; multiclass ``stay_id,
predicted_class, p_<class>..., status``; regression ``stay_id, prediction, status``. ``status`` is ``"ok"`` or the
reason a stay could not be scored (its other cells are empty, never a default value).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from healthfusion.data.cohort import Cohort
from healthfusion.data.records import PatientRecords
from healthfusion.data.schema import LabelSpec
from healthfusion.features.base import positions
from healthfusion.features.compose import CohortFeaturizer, engineered_features
from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.base import PREPROCESSING_FILE, ModelLoadError, load_network
from healthfusion.models.boosting import BoostingClassifier
from healthfusion.models.calibration import Calibrator
from healthfusion.models.folder import read_card
from healthfusion.models.inference import network_outputs
from healthfusion.models.run_ensemble import RunEnsemble

log = logging.getLogger(__name__)

OK = "ok"
#: what runs the network of a hybrid model (see :func:`load_model`)
BACKENDS = ("torch", "onnx")
NO_INPUT = "no usable data: none of the model's inputs observed before the prediction time"
_TABLES = {"ts": "events", "static": "static", "codes": "codes", "text": "notes", "image": "images"}

#: kind -> (values [n] or [n, K], usable [n] bool) for a cohort's stays (None: the hybrid, which needs only the arrays)
Scorer = Callable[[Cohort | None, list[str], ArrayDataset], tuple[np.ndarray, np.ndarray]]


class PredictionError(ValueError):
    """The input cannot be scored by this model (none of its inputs, no stays)."""


def risk_group(probability: np.ndarray, threshold: float) -> np.ndarray:
    """``"high"`` where ``probability >= threshold``, else ``"low"`` (the saved rule of every binary model)."""
    return np.where(np.asarray(probability, dtype=float) >= threshold, "high", "low")


class ScoringModel:
    """A loaded model folder: see the module docs. Build it with :func:`load_model`.

    Attributes
    ----------
    path : Path
    kind : str
        ``hybrid``, ``ensemble`` or ``gradient_boosting``.
    label : LabelSpec
        What is predicted; for a binary label its description says what 1 means (e.g. the positive class).
    threshold : float
        Of the risk-group rule (binary labels).
    calibrator : Calibrator or None
    featurizer : CohortFeaturizer
    backend : str
        ``torch`` or ``onnx`` (see :func:`load_model`).
    network : HybridModel or None
        The torch network of a hybrid model (also with the onnx backend: attributions use it), else None.
    """

    def __init__(self, path: Path, card: dict[str, Any], featurizer: CohortFeaturizer, scorer: Scorer,
                 calibrator: Calibrator | None, backend: str = "torch", network: Any = None):
        self.path, self.card, self.featurizer, self._scorer, self.calibrator = path, card, featurizer, scorer, calibrator
        self.backend, self.network = backend, network
        self.kind: str = card["kind"]
        self.label = LabelSpec.from_dict(card["label"])
        self.threshold = float(card["threshold"])

    # ----------------------------------------------------------------------------------------------- contract
    @property
    def data_options(self) -> dict[str, Any]:
        """The source reader options the model was trained with (prediction time/window, step, minimum stay, lab
        timing, positive class, ...): pass them to the reader so the stays are built the same way."""
        return dict(self.card["data"].get("options") or {})

    @property
    def data_source(self) -> str | None:
        """The source reader the training stays came from (e.g. ``physionet2012``), None if unknown."""
        return self.card["data"].get("source")

    @property
    def variables(self) -> list[str]:
        """The time-series variables and static columns the model reads (the cohort vocabulary)."""
        out: list[str] = []
        ts = self.featurizer.transformers_.get("ts")
        if ts is not None:
            out += list(ts.variables_)
        st = self.featurizer.transformers_.get("static")
        if st is not None:
            out += [c for c in st.numeric_ + st.categorical_ if c not in out]
        return out

    def info(self) -> dict[str, Any]:
        """Kind, version, fingerprint, label, threshold and risk-group rule, calibrator, data options and the
        training summary (n, prevalence, per-variable ranges); JSON-serialisable."""
        keep = ("format_version", "kind", "label", "data", "threshold", "risk_groups", "operating_point",
                "calibrator", "training", "scoring", "fingerprint", "healthfusion_version")
        out = {k: self.card.get(k) for k in keep}
        out["modalities"] = list(self.featurizer.modalities)
        out["variables"] = self.variables
        return json.loads(json.dumps(out))

    def predict(self, cohort: Cohort) -> pd.DataFrame:
        """One row per stay of ``cohort``, in cohort order (columns in the module docs).

        Raises
        ------
        PredictionError
            The cohort holds no stays, none of the model's modalities, or none of its time-series variables.
        """
        ids = [str(s) for s in cohort.stay_ids]
        if not ids:
            raise PredictionError("The cohort holds no stays; nothing to score.")
        self.check_cohort(cohort)
        data = self.featurizer.transform(cohort, ids, with_target=False)
        return self._frame(ids, *self._scorer(cohort, ids, data))

    @property
    def reads_records(self) -> bool:
        """Whether :meth:`predict_records` featurizes patients' arrays directly (a hybrid model over time series and
        static values) rather than through a cohort built from them (other kinds and modalities)."""
        return self.kind == "hybrid" and self.featurizer.reads_records

    def predict_records(self, records: PatientRecords, data: ArrayDataset | None = None) -> pd.DataFrame:
        """:meth:`predict` of patients given as arrays (what the scoring service receives): the same columns and
        numbers as ``predict(records.to_cohort())`` (float32 rounding aside), without building the cohort when
        :attr:`reads_records`. ``data``: ``featurizer.transform_records(records)`` when the caller has it already
        (the service, which also attributes it). Logs nothing per call.

        Raises
        ------
        PredictionError
            No patients, or the model reads time series and no event is one of its variables.
        """
        return pd.DataFrame(self.score_records(records, data))

    def score_records(self, records: PatientRecords, data: ArrayDataset | None = None) -> dict[str, np.ndarray]:
        """The columns of :meth:`predict_records` as arrays (``stay_id`` a list), without building a DataFrame:
        what the service and the streams read (a DataFrame cost ~3 ms per request, more than the features).

        Raises
        ------
        PredictionError
            As :meth:`predict_records`.
        """
        ids = list(records.stay_ids)
        if not ids:
            raise PredictionError("No patients; nothing to score.")
        if not self.reads_records:
            frame = self.predict(records.to_cohort())
            return {c: frame[c].tolist() if c == "stay_id" else frame[c].to_numpy() for c in frame.columns}
        ts = self.featurizer.transformers_.get("ts")
        if ts is not None and not (positions(ts.variables_, records.event_variable) >= 0).any():
            self._no_variables(set(np.asarray(records.event_variable, dtype=object).tolist()))
        data = self.featurizer.transform_records(records) if data is None else data
        return self._columns(ids, *self._scorer(None, ids, data))

    def _frame(self, ids: list[str], values: np.ndarray, usable: np.ndarray) -> pd.DataFrame:
        """The output table of :meth:`predict` from the scorer's values and usable rows."""
        return pd.DataFrame(self._columns(ids, values, usable))  # one call: adding columns one by one cost ~0.5 ms each

    def _columns(self, ids: list[str], values: np.ndarray, usable: np.ndarray) -> dict[str, Any]:
        """The output columns (module docs) from the scorer's values and usable rows."""
        out: dict[str, Any] = {"stay_id": ids}
        if self.label.kind == "multiclass":
            classes = list(self.label.classes or ())
            chosen = np.full(len(ids), None, dtype=object)
            chosen[usable] = np.asarray(classes, dtype=object)[values[usable].argmax(axis=1)]
            out["predicted_class"] = chosen
            for k, c in enumerate(classes):
                out[f"p_{c}"] = np.where(usable, values[:, k], np.nan)
        elif self.label.kind == "regression":
            out["prediction"] = np.where(usable, values, np.nan)
        else:
            p = np.where(usable, values, np.nan)
            if self.calibrator is not None:
                p = self.calibrator.transform(p)
            out["probability"] = p
            out["risk_group"] = np.where(usable, risk_group(np.nan_to_num(p), self.threshold), "")
        out["status"] = np.where(usable, OK, NO_INPUT)
        return out

    # ------------------------------------------------------------------------------------------------ checks
    def _no_variables(self, seen: set) -> None:
        variables = self.featurizer.transformers_["ts"].variables_
        raise PredictionError(
            f"None of the model's {len(variables)} time-series variables (e.g. {variables[:5]}) occur in the input "
            f"(which has e.g. {sorted(map(str, seen))[:5]}); was the model trained on another source?")

    def check_cohort(self, cohort: Cohort) -> None:
        """Raise PredictionError if the cohort has nothing the model reads; log one line per difference from the
        training stays (variables never observed, static columns missing, prediction times, source)."""
        feat = self.featurizer
        usable = [m for m in feat.modalities if cohort.has(_TABLES[m])]
        if not usable:
            raise PredictionError(f"The cohort has none of the model's modalities {list(feat.modalities)}.")
        ts = feat.transformers_.get("ts")
        if ts is not None and cohort.has("events"):
            seen = set(cohort.read_table("events", columns=["variable"])["variable"].unique())
            if not any(v in seen for v in ts.variables_):
                self._no_variables(seen)
            missing = [v for v in ts.variables_ if v not in seen]
            if missing:
                log.warning("%d of the model's variables never occur in the input and are treated as unobserved: %s",
                            len(missing), ", ".join(missing))
        st = feat.transformers_.get("static")
        if st is not None and cohort.has("static"):
            absent = [c for c in st.numeric_ + st.categorical_ if c not in cohort.static.columns]
            if absent:
                log.warning("The input lacks the model's static column(s) %s; they are treated as missing.", absent)
        trained = (self.card["training"] or {}).get("prediction_time") or {}
        if trained and "prediction_time" in cohort.stays.columns and len(cohort.stays):
            times = pd.to_numeric(cohort.stays["prediction_time"], errors="coerce")
            lo, hi = float(times.min()), float(times.max())
            if lo < trained["min"] - 1e-6 or hi > trained["max"] + 1e-6:
                log.warning("The input's prediction times (%g-%g h) differ from the training stays' (%g-%g h, reader "
                            "options %s): the model sees other windows than it was trained on.",
                            lo, hi, trained["min"], trained["max"], self.data_options)
        source = self.data_source
        if source and cohort.meta.source and cohort.meta.source != source:
            log.warning("The input comes from source %r; the model was trained on %r.", cohort.meta.source, source)


# ---------------------------------------------------------------------------------------------------- loading
def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"Cannot read {path}: {err}") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} must hold a JSON object.")
    return state


def _featurizer(state: dict, path: Path) -> CohortFeaturizer:
    try:
        return CohortFeaturizer.from_state(state)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(f"{path}: {err}") from None


def _hybrid(directory: Path, kind: str, backend: str) -> tuple[CohortFeaturizer, Scorer, Any]:
    network, state = load_network(directory)
    if state is None:
        raise ModelLoadError(f"{directory} has no {PREPROCESSING_FILE}; the folder is incomplete.")
    feat = _featurizer(state, directory / PREPROCESSING_FILE)
    forward = network_outputs
    if backend == "onnx":
        if not feat.reads_records:
            raise ModelLoadError(f"{directory}: the onnx backend scores hybrid models over time series and static "
                                 f"values; this one reads {list(feat.modalities)}. Use the torch backend.")
        from healthfusion.models.export import ExportError, onnx_outputs, onnx_session

        try:
            session = onnx_session(network, threads=torch.get_num_threads())
        except ExportError as err:
            raise ModelLoadError(f"{directory}: {err} Use the torch backend.") from None

        def forward(_, data: ArrayDataset, kind: str) -> np.ndarray:
            return onnx_outputs(session, data, kind)

    def score(cohort: Cohort | None, ids: list[str], data: ArrayDataset) -> tuple[np.ndarray, np.ndarray]:
        usable = data.usable_rows()
        shape = (len(ids), len(feat.label_spec_.classes)) if kind == "multiclass" else (len(ids),)
        values = np.full(shape, np.nan)
        if usable.any():
            values[usable] = forward(network, data[usable], kind)
        return values, usable

    return feat, score, network


def _ensemble(directory: Path) -> tuple[CohortFeaturizer, Scorer]:
    ensemble = RunEnsemble.load(directory)

    def score(cohort: Cohort, ids: list[str], data: ArrayDataset) -> tuple[np.ndarray, np.ndarray]:
        p = ensemble.predict_proba(cohort, ids, data)
        return p, ~np.isnan(p)

    return ensemble.featurizer, score


def _boosting(directory: Path, card: dict) -> tuple[CohortFeaturizer, Scorer]:
    feat = _featurizer(_read_state(directory / PREPROCESSING_FILE), directory / PREPROCESSING_FILE)
    model = BoostingClassifier.load(directory)
    stats = tuple((card.get("scoring") or {}).get("stats") or ())
    if not stats:
        raise ModelLoadError(f"{directory / 'model.json'} has no scoring.stats for gradient boosting.")

    def score(cohort: Cohort, ids: list[str], data: ArrayDataset) -> tuple[np.ndarray, np.ndarray]:
        usable = data.usable_rows()  # a stay with none of the inputs gets no score, as from the hybrid
        p = np.full(len(ids), np.nan)
        if usable.any():
            x = engineered_features(cohort, feat, [i for i, u in zip(ids, usable, strict=True) if u], stats=stats)
            p[usable] = model.predict_proba(x)[:, 1]
        return p, usable

    return feat, score


def load_model(path: str | os.PathLike, backend: str = "torch") -> ScoringModel:
    """Load the model folder at ``path`` (a run's ``model/``, or one member folder of an ensemble).

    ``backend``: ``"torch"`` (default) runs the network(s) with torch; ``"onnx"`` exports a hybrid model over time
    series and static values to ONNX when loading (a few seconds) and runs it with onnxruntime (extra ``onnx``;
    the same probabilities within 1e-5).

    Raises
    ------
    ModelLoadError
        Naming the file and the fix: not a model folder (a run folder is pointed to its ``model/``), a folder saved
        before ``model.json`` existed, any file changed, missing or corrupted since saving, an unknown kind; the
        onnx backend for a model it cannot export.
    ValueError
        An unknown ``backend``.
    ImportError
        ``backend="onnx"`` without the ``onnx`` extra (with the install hint).
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown scoring backend {backend!r}; choose one of {list(BACKENDS)}.")
    directory = Path(path)
    card = read_card(directory)
    kind = card["kind"]
    label_kind = (card.get("label") or {}).get("kind", "binary")
    network = None
    if backend != "torch" and kind != "hybrid":
        raise ModelLoadError(f"{directory}: the {backend} backend scores hybrid models; this is a {kind} model. "
                             "Use the torch backend.")
    if kind == "hybrid":
        feat, scorer, network = _hybrid(directory, label_kind, backend)
    elif kind == "ensemble":
        feat, scorer = _ensemble(directory)
    elif kind == "gradient_boosting":
        feat, scorer = _boosting(directory, card)
    else:  # read_card accepts only known kinds; kept for a newer card read by an older scorer
        raise ModelLoadError(f"{directory / 'model.json'} has model kind {kind!r} that this healthfusion cannot score.")
    try:
        calibrator = Calibrator.from_dict(card["calibrator"]) if card["calibrator"] else None
        LabelSpec.from_dict(card["label"])
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{directory / 'model.json'}: {err}") from None
    return ScoringModel(directory, card, feat, scorer, calibrator, backend=backend, network=network)
