"""Patients as JSON -> arrays -> the model's ``predict_records``: the one scoring path of the service and the streams.

Example::

    model = load_model("runs/x/model")
    vocabulary = Vocabulary.of(model)
    results = score_patients(model, [Patient(id="p1", static={"Age": 71}, events=[...])], vocabulary)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.records import PatientRecords
from healthfusion.models.scoring import OK, PredictionError, ScoringModel
from healthfusion.serve.explain import top_contributions
from healthfusion.serve.schemas import Contribution, Event, Patient, PatientResult


class PatientError(ValueError):
    """A patient cannot be read in the model's vocabulary; ``field`` locates the value (e.g.
    ``patients[0].events[3].variable``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


@dataclass(frozen=True)
class Vocabulary:
    """What a model reads: time-series ``variables``, ``numeric`` and ``categorical`` static columns, and the
    observation ``window`` in hours before the prediction time (the longest window of its feature pipeline)."""

    variables: tuple[str, ...]
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    window: float

    @classmethod
    def of(cls, model: ScoringModel) -> Vocabulary:
        transformers = model.featurizer.transformers_
        ts, st = transformers.get("ts"), transformers.get("static")
        hours = [float(t.hours) for t in transformers.values() if isinstance(getattr(t, "hours", None), int | float)]
        return cls(
            variables=tuple(ts.variables_) if ts is not None else (),
            numeric=tuple(st.numeric_) if st is not None else (),
            categorical=tuple(st.categorical_) if st is not None else (),
            window=max(hours, default=math.inf),
        )

    def check_events(self, events: Sequence[Event], where: str) -> None:
        """Raise :class:`PatientError` naming ``where.events[i].variable`` for a variable the model does not read."""
        known = set(self.variables)
        for i, event in enumerate(events):
            if event["variable"] not in known:
                raise PatientError(
                    f"{where}.events[{i}].variable",
                    f"{event['variable']!r} is not one of the model's {len(known)} time-series variables."
                    + _did_you_mean(event["variable"], self.variables) + " GET /v1/model lists them.",
                )

    def check_static(self, static: dict, where: str) -> dict:
        """Static values checked by column kind (numbers for numeric columns, text for categorical ones).

        Raises
        ------
        PatientError
            Naming ``where.static.<column>``: an unknown column, or a numeric column given text.
        """
        columns = self.numeric + self.categorical
        out = {}
        for name, value in static.items():
            field = f"{where}.static.{name}"
            if name not in columns:
                raise PatientError(field, f"{name!r} is not one of the model's static columns {list(columns)}."
                                   + _did_you_mean(name, columns))
            if name in self.numeric and isinstance(value, str):
                raise PatientError(field, f"column {name!r} is numeric; send a number (or null when unknown), "
                                          f"got {type(value).__name__}.")
            if isinstance(value, float) and not math.isfinite(value):
                raise PatientError(field, "must be finite; send null when unknown.")
            out[name] = value if value is None or name in self.numeric else str(value)
        return out


def patients_records(patients: Sequence[Patient], vocabulary: Vocabulary, where: str = "patients") -> PatientRecords:
    """``patients`` as arrays (one stay each, ``stay_id`` = ``id``): their static values (every static column of
    the model, None where not sent), their events up to the prediction time, and their prediction times.

    Raises
    ------
    PatientError
        A duplicated id, an unknown variable or static column, or a numeric column given text (field named).
    """
    seen: set[str] = set()
    stay, time, variable, value, at = [], [], [], [], []
    columns = vocabulary.numeric + vocabulary.categorical
    static: dict[str, list] = {c: [] for c in columns}
    for i, p in enumerate(patients):
        if p.id in seen:
            raise PatientError(f"{where}[{i}].id", "appears twice in the request; send each patient once.")
        seen.add(p.id)
        checked = vocabulary.check_static(p.static, f"{where}[{i}]")
        for column in columns:
            static[column].append(checked.get(column))
        vocabulary.check_events(p.events, f"{where}[{i}]")
        cutoff = p.at()
        at.append(cutoff)
        for e in p.events:
            if e["time"] <= cutoff:
                stay.append(i)
                time.append(e["time"])
                variable.append(e["variable"])
                value.append(e["value"])
    types = {**dict.fromkeys(vocabulary.numeric, "numeric"), **dict.fromkeys(vocabulary.categorical, "categorical")}
    return PatientRecords(stay_ids=tuple(p.id for p in patients), prediction_time=np.array(at, dtype=float),
                          event_stay=np.array(stay, dtype=np.int64), event_time=np.array(time, dtype=float),
                          event_variable=np.array(variable, dtype=object), event_value=np.array(value, dtype=float),
                          static=static if columns else None, feature_types=types)


def score_patients(model: ScoringModel, patients: Sequence[Patient], vocabulary: Vocabulary,
                   where: str = "patients", top_k: int = 0) -> list[PatientResult]:
    """Score ``patients`` with ``model.predict_records`` (the numbers of ``predict`` on the same patients as a
    cohort: calibrated probability, the saved risk-group rule); results in input order. A patient the model
    cannot score gets ``probability`` None and the reason in ``status``. ``top_k`` > 0 adds each scored patient's
    top contributing features (:func:`healthfusion.serve.explain.top_contributions`).

    Raises
    ------
    PatientError
        As :func:`patients_records`.
    """
    records = patients_records(patients, vocabulary, where)
    data = model.featurizer.transform_records(records) if model.reads_records and len(records) else None
    try:
        frame = model.predict_records(records, data)
    except PredictionError as err:  # nothing the model reads in any of them: each gets the reason
        return [PatientResult(id=p.id, probability=None, risk_group=None, status=f"not scored: {err}")
                for p in patients]
    probability = frame["probability"].to_numpy(dtype=float)
    ok = (frame["status"] == OK).to_numpy() & np.isfinite(probability)
    top = top_contributions(model, data, top_k) if top_k and data is not None else [[] for _ in patients]
    return [PatientResult(id=p.id, probability=float(probability[i]) if ok[i] else None,
                          risk_group=str(group) if ok[i] else None, status=str(status),
                          top_features=[Contribution(feature=f, attribution=a) for f, a in top[i]] if ok[i] else [])
            for i, (p, group, status) in enumerate(zip(patients, frame["risk_group"], frame["status"], strict=True))]


def cohort_patients(cohort: Cohort, vocabulary: Vocabulary, stay_ids: Sequence[str] | None = None) -> list[Patient]:
    """The stays of ``cohort`` (all, or ``stay_ids``) as patients in the model's vocabulary: their static values,
    the events of the model's variables up to each stay's prediction time, and that prediction time (what
    ``healthfusion replay`` sends, and how a PhysioNet record becomes a request)."""
    stays = cohort.stays.set_index("stay_id")
    ids = [str(s) for s in (stays.index if stay_ids is None else stay_ids)]
    static = cohort.static.set_index("stay_id") if cohort.has("static") else None
    columns = [c for c in vocabulary.numeric + vocabulary.categorical if static is not None and c in static.columns]
    events = cohort.read_table("events") if cohort.has("events") and vocabulary.variables else None
    if events is not None:
        events = events[events["variable"].isin(vocabulary.variables) & events["stay_id"].isin(ids)]
        grouped = dict(tuple(events.sort_values(["stay_id", "time"]).groupby("stay_id", sort=False)))
    out = []
    for sid in ids:
        at = float(stays.at[sid, "prediction_time"])
        values = {}
        if static is not None and sid in static.index:
            row = static.loc[sid, columns]
            values = {c: (None if pd.isna(v) else (float(v) if c in vocabulary.numeric else str(v)))
                      for c, v in row.items()}
        rows = grouped.get(sid) if events is not None else None
        evs = [] if rows is None else [
            Event(time=float(t), variable=str(v), value=float(x))
            for t, v, x in zip(rows["time"], rows["variable"], rows["value"], strict=True)
            if t <= at and np.isfinite(x) and t >= 0
        ]
        out.append(Patient(id=_safe_id(sid), static=values, events=evs, prediction_time=at))
    return out


def _safe_id(stay_id: str) -> str:
    return "".join(c if c.isalnum() or c in "._:-" else "_" for c in stay_id)[:128] or "stay"
