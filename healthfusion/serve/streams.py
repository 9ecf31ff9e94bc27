"""Live monitoring streams: one session per patient that takes events as they arrive and keeps a current risk.

**Incremental input, the model's answer recomputed over a bounded window.** A session keeps its events as arrays
(time, variable position, value): each update checks and appends only the new events, drops the ones that left the
model's observation window (plus the out-of-order tolerance), and scores the rest with the featurization and
forward pass of ``/v1/predict`` and ``predict`` (:func:`healthfusion.serve.patients.score_records`) at the latest
time. Nothing about an event is re-validated or re-converted after its arrival. The hourly grid itself is rebuilt
from the buffered arrays on every update (a few hundred events: tens of microseconds of numpy), not updated bin by
bin, because the grid is anchored at the prediction time: a new event moves the prediction time, which moves every
bin boundary (PhysioNet times are in minutes, bins 1-2 h). For the same reason we do not carry a recurrent state:
the model's answer at time t is not a function of a state carried from t-1 (the window slides, values are carried
forward and standardised per bin, attention pooling re-weights every step of the window). Carrying state would give
a different number from ``predict``; recomputing gives the same number at a cost bounded by the window length
(measured in ``benchmarks/serve_latency.py``).

**Out-of-order events.** An event older than the latest time seen is accepted when it is within ``tolerance``
hours of it (it enters the next recomputation); older ones are refused and counted in ``rejected``, never dropped
silently.

**Alerts with hysteresis.** A session alerts when the risk rises to ``on`` (default: the model's threshold) while
not alerting; it stops alerting only when the risk falls below ``off`` (default ``on - 0.1``), and a new alert
needs ``cooldown`` hours (default 4) since the previous one, so one patient hovering at the threshold does not
alert every minute.

Example::

    streams = StreamRegistry(load_model("runs/x/model"))
    state = streams.update("bed-7", [Event(time=3.0, variable="HR", value=131.0)], static={"Age": 71})
    state.probability, state.alerting, state.alerts
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from healthfusion.data.records import PatientRecords
from healthfusion.models.scoring import OK, ScoringModel
from healthfusion.serve.patients import PatientError, Vocabulary, event_columns, score_records
from healthfusion.serve.schemas import Alert, Event, StreamState


@dataclass(frozen=True)
class AlertPolicy:
    """When a stream alerts: at ``on`` (None = the model's threshold), re-armed below ``off`` (None = ``on - 0.1``),
    at most one alert per ``cooldown`` hours.

    Raises
    ------
    ValueError
        ``off`` above ``on``, or a negative cooldown (in :meth:`resolve`).
    """

    on: float | None = None
    off: float | None = None
    cooldown: float = 4.0

    def resolve(self, threshold: float) -> tuple[float, float, float]:
        on = threshold if self.on is None else self.on
        off = max(0.0, on - 0.1) if self.off is None else self.off
        if off > on:
            raise ValueError(f"Alert policy: off ({off}) must not exceed on ({on}); choose off <= on.")
        if self.cooldown < 0:
            raise ValueError(f"Alert policy: cooldown must be >= 0 hours, got {self.cooldown}.")
        return on, off, self.cooldown


def hysteresis(alerting: bool, p: float, on: float, off: float, time: float, last_alert: float | None,
               cooldown: float) -> tuple[bool, bool]:
    """One step of the alert rule: ``(alerting after this risk, whether an alert is raised now)``. Alerting starts
    at ``p >= on`` and stops at ``p < off``; starting raises an alert unless the previous one (at ``last_alert``)
    is less than ``cooldown`` hours ago."""
    if alerting:
        return p >= off, False
    if p < on:
        return False, False
    return True, last_alert is None or time - last_alert >= cooldown


class StreamSession:
    """The live state of one patient (see the module docs). Not thread-safe on its own; the registry locks it.

    Parameters
    ----------
    model : ScoringModel
    stream_id : str
    vocabulary : Vocabulary
    tolerance : float, default 1.0
        Hours an event may arrive late (older than the latest time) and still count.
    policy : AlertPolicy
    """

    def __init__(self, model: ScoringModel, stream_id: str, vocabulary: Vocabulary, tolerance: float = 1.0,
                 policy: AlertPolicy | None = None):
        self.model, self.id, self.vocabulary, self.tolerance = model, stream_id, vocabulary, tolerance
        self.on, self.off, self.cooldown = (policy or AlertPolicy()).resolve(model.threshold)
        self._time, self._code, self._value = np.empty(0), np.empty(0, np.int64), np.empty(0)  # buffered events
        self.static: dict = {}
        self.time: float | None = None
        self.n_events = 0
        self.rejected = 0
        self.probability: float | None = None
        self.risk_group: str | None = None
        self.status = "no events yet"
        self.alerting = False
        self.alerts: list[Alert] = []

    @property
    def buffered(self) -> int:
        """Events kept for the next update (those the model can still see)."""
        return len(self._time)

    def update(self, events: Sequence[Event], static: dict | None = None, now: float | None = None) -> StreamState:
        """Add ``events`` (any order within the tolerance) and ``static`` values, rescore at the latest time (or
        ``now``, hours since admission, when later: a clock tick without new events), update the alert.

        Raises
        ------
        PatientError
            An unknown variable or static column (field named); nothing of the update is applied then.
        """
        time, variable, value = event_columns(events)
        code = self.vocabulary.codes(variable, "")
        checked = self.vocabulary.check_static(static or {}, "") if static else {}
        self.static.update(checked)
        previous = self.time if self.time is not None else -math.inf
        # taken in time order, an event of this update is never older than one accepted before it in the update:
        # only the latest time of the earlier updates can make it too old
        accepted = time >= previous - self.tolerance
        self.rejected += int((~accepted).sum())
        self.n_events += int(accepted.sum())
        latest = max(previous, float(time[accepted].max())) if accepted.any() else previous
        order = np.argsort(time, kind="stable")
        keep = order[accepted[order]]
        self._time = np.concatenate([self._time, time[keep]])
        self._code = np.concatenate([self._code, code[keep]])
        self._value = np.concatenate([self._value, value[keep]])
        if now is not None:
            latest = max(latest, now)
        if self.buffered or self.static:
            self.time = max(latest, 0.0)
            self._prune()
            self._score()
        return self.state()

    def _prune(self) -> None:
        """Keep the events the model can still see at the next update (window + tolerance before the latest)."""
        keep = self._time >= self.time - self.vocabulary.window - self.tolerance
        if not keep.all():
            self._time, self._code, self._value = self._time[keep], self._code[keep], self._value[keep]

    def records(self) -> PatientRecords:
        """The buffered events up to :attr:`time` and the static values, as the one patient ``/v1/predict`` would
        build from the same events (:func:`healthfusion.serve.patients.patients_records`)."""
        seen = self._time <= self.time
        columns = self.vocabulary.numeric + self.vocabulary.categorical
        types = {**dict.fromkeys(self.vocabulary.numeric, "numeric"),
                 **dict.fromkeys(self.vocabulary.categorical, "categorical")}
        return PatientRecords(stay_ids=(self.id,), prediction_time=np.array([self.time]),
                              event_stay=np.zeros(int(seen.sum()), np.int64), event_time=self._time[seen],
                              event_variable=self.vocabulary.names(self._code[seen]),
                              event_value=self._value[seen],
                              static={c: [self.static.get(c)] for c in columns} if columns else None,
                              feature_types=types)

    def _score(self) -> None:
        result = score_records(self.model, self.records())[0]
        self.probability, self.risk_group, self.status = result.probability, result.risk_group, result.status
        if result.status != OK or result.probability is None:
            return
        self.alerting, raised = hysteresis(self.alerting, result.probability, self.on, self.off, self.time,
                                           self.alerts[-1].time if self.alerts else None, self.cooldown)
        if raised:
            self.alerts.append(Alert(time=self.time, probability=result.probability))

    def state(self) -> StreamState:
        return StreamState(id=self.id, time=self.time, n_events=self.n_events, probability=self.probability,
                           risk_group=self.risk_group, status=self.status, alerting=self.alerting,
                           alerts=list(self.alerts), rejected=self.rejected)


class StreamRegistry:
    """The streams of one model, created on first use, at most ``max_streams`` at a time (thread-safe).

    Raises
    ------
    StreamLimitError
        In :meth:`update`, when a new stream would exceed ``max_streams``.
    KeyError
        In :meth:`get`, for an unknown stream id.
    """

    def __init__(self, model: ScoringModel, *, tolerance: float = 1.0, policy: AlertPolicy | None = None,
                 max_streams: int = 10_000):
        self.model, self.tolerance, self.policy, self.max_streams = model, tolerance, policy, max_streams
        self.vocabulary = Vocabulary.of(model)
        (policy or AlertPolicy()).resolve(model.threshold)  # a bad policy fails here, not on the first event
        self._sessions: dict[str, StreamSession] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def update(self, stream_id: str, events: Sequence[Event], static: dict | None = None,
               now: float | None = None) -> StreamState:
        with self._lock:
            session = self._sessions.get(stream_id)
            if session is None:
                if len(self._sessions) >= self.max_streams:
                    raise StreamLimitError(f"{self.max_streams} streams are open; close one (DELETE "
                                           "/v1/streams/{id}) or start the service with a higher --max-streams.")
                session = StreamSession(self.model, stream_id, self.vocabulary, self.tolerance, self.policy)
                self._sessions[stream_id] = session
            return session.update(events, static, now)

    def get(self, stream_id: str) -> StreamState:
        with self._lock:
            return self._sessions[stream_id].state()

    def close(self, stream_id: str) -> None:
        with self._lock:
            del self._sessions[stream_id]


class StreamLimitError(RuntimeError):
    """Too many open streams."""


__all__ = ["AlertPolicy", "PatientError", "StreamLimitError", "StreamRegistry", "StreamSession"]
