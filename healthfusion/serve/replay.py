"""``healthfusion replay``: play a cohort's records (e.g. PhysioNet 2012) hour by hour into live streams, in this
process (:class:`~.streams.StreamRegistry`) or against a running service over HTTP, at a chosen speed.

Each stay's events up to its prediction time are sent in blocks of ``step`` hours of patient time, each block with
``now`` = the end of the block, so the stream's risk is recomputed every ``step`` hours; ``speed`` is patient hours
per wall-clock hour (0 = as fast as possible).

Example::

    frame = replay(model, patients, speed=0)                 # library
    frame = replay(model, patients, url="http://127.0.0.1:8000", token=token)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import pandas as pd

from healthfusion.models.scoring import ScoringModel
from healthfusion.optional import require
from healthfusion.serve.schemas import Patient, StreamState
from healthfusion.serve.streams import AlertPolicy, StreamRegistry

log = logging.getLogger(__name__)


def _http_sender(url: str, token: str, timeout: float) -> Callable[[str, dict], StreamState]:
    httpx = require("httpx", extra="serve", needed_for="Replaying against a service")
    client = httpx.Client(base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def send(stream_id: str, body: dict) -> StreamState:
        response = client.post(f"/v1/streams/{stream_id}/events", json=body)
        if response.status_code != 200:
            raise ValueError(f"The service answered {response.status_code} to a stream update: {response.text[:300]}")
        return StreamState.model_validate(response.json())

    return send


def replay(model: ScoringModel, patients: Sequence[Patient], *, step: float = 1.0, speed: float = 0.0,
           url: str | None = None, token: str | None = None, policy: AlertPolicy | None = None,
           tolerance: float = 1.0, progress: Callable[[int, int], None] | None = None,
           timeout: float = 30.0) -> pd.DataFrame:
    """Replay ``patients`` into streams; one row per patient: ``id``, ``updates``, ``final_probability``,
    ``n_alerts``, ``first_alert_time`` (hours since admission, NaN without alerts), ``status``.

    Raises
    ------
    ValueError
        ``step`` or ``speed`` out of range, or the service refused an update (its answer included).
    """
    if not step > 0 or speed < 0:
        raise ValueError(f"replay needs step > 0 and speed >= 0 (0 = as fast as possible); got step={step}, "
                         f"speed={speed}.")
    if url is not None:
        send = _http_sender(url, token or "", timeout)
    else:
        streams = StreamRegistry(model, tolerance=tolerance, policy=policy, max_streams=max(1, len(patients)))

        def send(stream_id: str, body: dict) -> StreamState:
            return streams.update(stream_id, body["events"], body.get("static"), body.get("now"))

    rows = []
    for k, p in enumerate(patients):
        events = sorted(p.events, key=lambda e: e["time"])
        end, state, updates, i = p.at(), None, 0, 0
        for block in range(1, math.ceil(end / step) + 1):
            now = min(block * step, end)
            chunk = []
            while i < len(events) and events[i]["time"] <= now:
                chunk.append(events[i])
                i += 1
            body = {"events": chunk, "now": now, "static": p.static if state is None else None}
            if url is not None:
                body = {"events": [dict(e) for e in chunk], "now": now,
                        "static": p.static if state is None else None}
            state = send(p.id, body)
            updates += 1
            if speed > 0:
                time.sleep(step * 3600.0 / speed)
        rows.append({"id": p.id, "updates": updates,
                     "final_probability": None if state is None else state.probability,
                     "n_alerts": 0 if state is None else len(state.alerts),
                     "first_alert_time": state.alerts[0].time if state is not None and state.alerts else math.nan,
                     "status": "no events" if state is None else state.status})
        if progress is not None:
            progress(k + 1, len(patients))
    return pd.DataFrame(rows)
