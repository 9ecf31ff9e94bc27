"""Patients as JSON -> arrays -> the model's ``predict_records``: the one scoring path of the service and the streams.

Example::

    model = load_model("runs/x/model")
    vocabulary = Vocabulary.of(model)
    results = score_patients(model, [Patient(id="p1", static={"Age": 71}, events=[...])], vocabulary)
"""

from __future__ import annotations

import difflib
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

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

    @cached_property
    def lookup(self) -> dict[str, int]:
        """Variable name -> its position in :attr:`variables`."""
        return {name: i for i, name in enumerate(self.variables)}

    def codes(self, variables: Sequence[str], where: str, counts: np.ndarray | None = None) -> np.ndarray:
        """``[E]`` int64: the position of each of ``variables`` (the events' names, in order) in :attr:`variables`.

        ``counts``: events per patient when ``variables`` are the events of several patients back to back (then
        ``where`` names the list, e.g. ``patients``); without it they are one list's events (``where`` names its
        owner, e.g. ``stream``).

        Raises
        ------
        PatientError
            Naming ``where[i].events[j].variable`` (or ``where.events[j].variable``) of the first variable the model
            does not read, with a "did you mean".
        """
        lookup = self.lookup
        out = np.fromiter(map(lookup.get, variables, itertools.repeat(-1)), np.int64, len(variables))
        bad = np.flatnonzero(out < 0)
        if bad.size:
            k = int(bad[0])
            if counts is None:
                field = f"{where}.events[{k}].variable"
            else:
                starts = np.concatenate([[0], np.cumsum(counts)])
                i = int(np.searchsorted(starts, k, side="right") - 1)
                field = f"{where}[{i}].events[{k - starts[i]}].variable"
            name = variables[k]
            raise PatientError(field, f"{name!r} is not one of the model's {len(self.variables)} time-series "
                                      f"variables." + _did_you_mean(name, self.variables) + " GET /v1/model lists them.")
        return out

    def names(self, codes: np.ndarray) -> pd.Categorical:
        """Variable positions (from :meth:`codes`) as the names the transformers read, over the model's variables."""
        return pd.Categorical.from_codes(codes, dtype=self._dtype)

    @cached_property
    def _dtype(self) -> pd.CategoricalDtype:  # built once: building it checks the categories (~0.1 ms)
        return pd.CategoricalDtype(pd.Index(self.variables, dtype=object))

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


_TIME, _VARIABLE, _VALUE = (operator.itemgetter(key) for key in ("time", "variable", "value"))


def event_columns(events: Sequence[Event]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(times [E] float, variable names, values [E] float) of ``events`` in their order. One C-level pass per
    column (a transposing ``zip(*events)`` of 40,000 events took 3x as long)."""
    n = len(events)
    return (np.fromiter(map(_TIME, events), float, n), list(map(_VARIABLE, events)),
            np.fromiter(map(_VALUE, events), float, n))


def patients_records(patients: Sequence[Patient], vocabulary: Vocabulary, where: str = "patients") -> PatientRecords:
    """``patients`` as arrays (one stay each, ``stay_id`` = ``id``): their static values (every static column of
    the model, None where not sent), their events up to the prediction time, and their prediction times. The events
    of all patients are read in one pass and checked as arrays (no per-patient loop over events).

    Raises
    ------
    PatientError
        A duplicated id, an unknown variable or static column, or a numeric column given text (field named).
    """
    n = len(patients)
    ids = tuple(p.id for p in patients)
    if len(set(ids)) != n:
        seen: set[str] = set()
        for i, sid in enumerate(ids):
            if sid in seen:
                raise PatientError(f"{where}[{i}].id", "appears twice in the request; send each patient once.")
            seen.add(sid)
    columns = vocabulary.numeric + vocabulary.categorical
    static: dict[str, list] = {c: [] for c in columns}
    for i, p in enumerate(patients):
        checked = vocabulary.check_static(p.static, f"{where}[{i}]") if p.static else {}
        for column in columns:
            static[column].append(checked.get(column))
    counts = np.fromiter((len(p.events) for p in patients), np.int64, n)
    time, variable, value = event_columns(list(itertools.chain.from_iterable(p.events for p in patients)))
    code = vocabulary.codes(variable, where, counts)
    stay = np.repeat(np.arange(n), counts)
    latest = np.zeros(n)  # the default prediction time: the latest event (times are >= 0), 0 without events
    np.maximum.at(latest, stay, time)
    at = np.array([latest[i] if p.prediction_time is None else p.prediction_time for i, p in enumerate(patients)],
                  dtype=float)
    keep = time <= at[stay]
    types = {**dict.fromkeys(vocabulary.numeric, "numeric"), **dict.fromkeys(vocabulary.categorical, "categorical")}
    return PatientRecords(stay_ids=ids, prediction_time=at, event_stay=stay[keep], event_time=time[keep],
                          event_variable=vocabulary.names(code[keep]), event_value=value[keep],
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
    return score_records(model, patients_records(patients, vocabulary, where), top_k)


def score_records(model: ScoringModel, records: PatientRecords, top_k: int = 0) -> list[PatientResult]:
    """:func:`score_patients` of patients already turned into arrays (:func:`patients_records`; a stream keeps its
    buffered events as arrays and comes in here), results in ``records`` order."""
    data = model.featurizer.transform_records(records) if model.reads_records and len(records) else None
    try:
        scores = model.score_records(records, data)
    except PredictionError as err:  # nothing the model reads in any of them: each gets the reason
        return [PatientResult(id=sid, probability=None, risk_group=None, status=f"not scored: {err}")
                for sid in records.stay_ids]
    probability = np.asarray(scores["probability"], dtype=float)
    ok = (np.asarray(scores["status"]) == OK) & np.isfinite(probability)
    top = top_contributions(model, data, top_k) if top_k and data is not None else [[] for _ in records.stay_ids]
    return [PatientResult(id=sid, probability=float(probability[i]) if ok[i] else None,
                          risk_group=str(group) if ok[i] else None, status=str(status),
                          top_features=[Contribution(feature=f, attribution=a) for f, a in top[i]] if ok[i] else [])
            for i, (sid, group, status) in enumerate(zip(records.stay_ids, scores["risk_group"], scores["status"],
                                                         strict=True))]


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
