"""Pydantic request and response bodies of the scoring service (also the library's patient format).

A patient is written in the model's own vocabulary: static columns by name, time-series events as
``{"time": hours since admission, "variable": name, "value": number}``, and the prediction time in hours since
admission (default: the time of the latest event)::

    {"patients": [{"id": "p1", "static": {"Age": 71, "Gender": 1},
                   "events": [{"time": 1.5, "variable": "HR", "value": 112.0}], "prediction_time": 48}]}

Unknown keys are errors (naming the field), so a misspelt key is never ignored.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import TypedDict

#: Most events one patient may carry in one request.
MAX_EVENTS_PER_PATIENT = 50_000

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@with_config(ConfigDict(extra="forbid"))
class Event(TypedDict):
    """One observation, a plain dict: ``time`` (hours since admission, >= 0), ``variable`` (a model variable),
    ``value`` (finite). ``Event(time=1.5, variable="HR", value=112.0)`` builds one. A dict rather than a model
    because a batch carries tens of thousands of events: validating them as dicts took about a third of the time
    of validating them as pydantic models."""

    time: Annotated[float, Field(ge=0.0, le=24 * 365, allow_inf_nan=False)]
    variable: Annotated[str, Field(min_length=1, max_length=128)]
    value: Annotated[float, Field(allow_inf_nan=False)]


class Patient(_Strict):
    """One patient to score; ``prediction_time`` defaults to the latest event time (0 without events)."""

    id: Identifier
    static: dict[str, float | str | None] = Field(default_factory=dict)
    events: list[Event] = Field(default_factory=list, max_length=MAX_EVENTS_PER_PATIENT)
    prediction_time: float | None = Field(default=None, ge=0.0, le=24 * 365)

    def at(self) -> float:
        """The prediction time in hours since admission."""
        if self.prediction_time is not None:
            return self.prediction_time
        return max((e["time"] for e in self.events), default=0.0)


class PredictRequest(_Strict):
    """``POST /v1/predict`` body: one or more patients (at most the service's batch limit)."""

    patients: list[Patient] = Field(min_length=1)
    top_k: int = Field(default=5, ge=0, le=50, description=(
        "top contributing features returned per patient (0: none, and the fastest answer)"))


class Contribution(_Strict):
    """One input's signed contribution to a patient's risk: ``attribution`` in logit units against a reference
    patient at the training means (> 0 raises the risk); ``feature`` is a time-series variable (summed over the
    window) or an encoded static feature (``age``, ``age__missing``, ``sex=F``). See
    :mod:`healthfusion.serve.explain`."""

    feature: str
    attribution: float


class PatientResult(_Strict):
    """Per patient: calibrated ``probability`` and ``risk_group`` (None when not scored), ``status`` ("ok" or
    the reason it could not be scored) and ``top_features``: the ``top_k`` largest contributions by absolute
    value, largest first (empty when not scored, ``top_k`` is 0, or the model is not explained)."""

    id: str
    probability: float | None
    risk_group: str | None
    status: str
    top_features: list[Contribution] = Field(default_factory=list)


class PredictResponse(_Strict):
    """``POST /v1/predict`` answer, patients in request order; ``model`` is the model's fingerprint."""

    model: str
    results: list[PatientResult]


class StreamEvents(_Strict):
    """``POST /v1/streams/{id}/events`` body: new events of one patient (static values once, or when they change)."""

    events: list[Event] = Field(default_factory=list, max_length=MAX_EVENTS_PER_PATIENT)
    static: dict[str, float | str | None] | None = None
    now: float | None = Field(default=None, ge=0.0, le=24 * 365,
                              description="current time in hours since admission, if later than the events")


class Alert(_Strict):
    """An alert raised by a stream: when (hours since admission) and the risk that crossed the threshold."""

    time: float
    probability: float


class StreamState(_Strict):
    """A stream's state after its latest update (see :class:`healthfusion.serve.streams.StreamSession`)."""

    id: str
    time: float | None
    n_events: int
    probability: float | None
    risk_group: str | None
    status: str
    alerting: bool
    alerts: list[Alert]
    rejected: int = Field(description="events refused so far as older than the latest time minus the tolerance")


class Health(_Strict):
    status: str
    model: str
    backend: str
    streams: int
