"""Patients as flat arrays: the events and static values of a scoring request, without a cohort's tables.

The scoring service turns each request into one :class:`PatientRecords` and featurizes it directly
(:meth:`healthfusion.features.compose.CohortFeaturizer.transform_records`), with the same fitted transformers and
the same array code as a cohort (building a :class:`~healthfusion.data.cohort.Cohort` per request cost ~50 ms of
pandas). :meth:`PatientRecords.to_cohort` gives the equivalent cohort, for models whose features need one.

Example::

    records = PatientRecords(stay_ids=("p1",), prediction_time=np.array([48.0]),
                             event_stay=np.array([0]), event_time=np.array([1.5]),
                             event_variable=np.array(["HR"], dtype=object), event_value=np.array([112.0]),
                             static={"Age": [71.0]}, feature_types={"Age": "numeric"})
    cohort = records.to_cohort()
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.schema import CohortMeta


@dataclass(frozen=True)
class PatientRecords:
    """``n`` patients (one stay each) and their ``E`` events as arrays.

    Attributes
    ----------
    stay_ids : tuple of str
        ``n`` distinct ids.
    prediction_time : [n] float
        Hours since admission.
    event_stay : [E] int
        Row in ``stay_ids`` of each event.
    event_time, event_value : [E] float
    event_variable : [E] object, or a ``pd.Categorical``
        Variable names. The scoring service sends a categorical over the model's variables (built from the
        request in one pass), which the transformers look up per category rather than per event.
    static : dict of column -> list of n values, or None
        None: no static table. Numeric columns hold floats (NaN or None missing), categorical ones text or None.
    feature_types : dict of column -> "numeric" | "categorical"

    Raises
    ------
    ValueError
        Arrays of mismatched lengths, an event row outside ``0..n-1``, duplicated stay ids, or a static column of
        the wrong length or without a type (naming it).
    """

    stay_ids: tuple[str, ...]
    prediction_time: np.ndarray
    event_stay: np.ndarray
    event_time: np.ndarray
    event_variable: np.ndarray | pd.Categorical
    event_value: np.ndarray
    static: dict[str, list] | None = None
    feature_types: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, e = len(self.stay_ids), len(self.event_stay)
        if len(set(self.stay_ids)) != n:
            raise ValueError("PatientRecords.stay_ids must be distinct.")
        if len(self.prediction_time) != n:
            raise ValueError(f"PatientRecords.prediction_time has {len(self.prediction_time)} values for {n} stays.")
        for name in ("event_time", "event_variable", "event_value"):
            if len(getattr(self, name)) != e:
                raise ValueError(f"PatientRecords.{name} has {len(getattr(self, name))} values for {e} events.")
        if e and (self.event_stay.min() < 0 or self.event_stay.max() >= n):
            raise ValueError(f"PatientRecords.event_stay must index the {n} stays (0..{n - 1}).")
        for column, values in (self.static or {}).items():
            if len(values) != n:
                raise ValueError(f"PatientRecords.static[{column!r}] has {len(values)} values for {n} stays.")
            if self.feature_types.get(column) not in ("numeric", "categorical"):
                raise ValueError(f"PatientRecords.feature_types must say whether {column!r} is 'numeric' or "
                                 "'categorical'.")

    def __len__(self) -> int:
        return len(self.stay_ids)

    def events_frame(self) -> pd.DataFrame:
        """The events as an events table (``stay_id, time, variable, value``), in their order."""
        return pd.DataFrame({"stay_id": np.asarray(self.stay_ids, dtype=object)[self.event_stay],
                             "time": self.event_time, "variable": np.asarray(self.event_variable, dtype=object),
                             "value": self.event_value})

    def to_cohort(self, name: str = "records") -> Cohort:
        """The same patients as a cohort (``stay_id`` = ``patient_id``), with an events table and, when
        :attr:`static` is not None, a static table typed by :attr:`feature_types`."""
        ids = list(self.stay_ids)
        stays = pd.DataFrame({"stay_id": ids, "patient_id": ids, "prediction_time": self.prediction_time})
        static = None
        if self.static is not None:
            static = pd.DataFrame({"stay_id": ids})
            for column, values in self.static.items():
                numeric = self.feature_types[column] == "numeric"
                static[column] = pd.Series([np.nan if v is None else v for v in values], dtype=float) if numeric \
                    else pd.Series(values, dtype=object)
        return Cohort(stays, static=static, events=self.events_frame(),
                      meta=CohortMeta(name=name, feature_types=dict(self.feature_types)))
