"""healthfusion serve: the same risk through predict, the service and a stream; bad requests rejected with reasons."""

import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

from healthfusion.models.scoring import OK, load_model
from healthfusion.serve.app import create_app, read_token
from healthfusion.serve.patients import Vocabulary, cohort_patients
from healthfusion.serve.streams import StreamRegistry
from tests.serve.conftest import SOURCE_OPTIONS

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


@pytest.fixture(scope="module")
def client(model):
    return TestClient(create_app(model, token=TOKEN, max_body_bytes=200_000, max_batch=50))


@pytest.fixture(scope="module")
def patients(model, cohort):
    return cohort_patients(cohort, Vocabulary.of(model), [str(s) for s in cohort.stay_ids[:12]])


def test_predict_service_and_stream_give_the_same_risk(model, cohort, client, patients, tmp_path):
    """A model with a non-default window (36 h) and positive class (survival) scores the same through predict, the
    service and a stream replayed to the end: up to float32 rounding, which depends on how many stays share a
    forward pass (~1e-7)."""
    from healthfusion.data.sources import get_source

    default = get_source("synthetic")(tmp_path / "default", **SOURCE_OPTIONS, hours=36.0)
    flipped, died = cohort.label("mortality"), default.label("mortality")  # predict's cohort: the saved options
    assert flipped.index.equals(died.index) and (flipped == 1 - died).all() and 0 < died.mean() < 1
    expected = model.predict(cohort).set_index("stay_id")
    body = {"patients": [json.loads(p.model_dump_json()) for p in patients]}
    response = client.post("/v1/predict", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [p.id for p in patients]
    scored = [r for r in results if r["status"] == OK]
    assert len(scored) >= 10
    for r in scored:
        assert r["probability"] == pytest.approx(expected.at[r["id"], "probability"], abs=1e-6)
        assert r["risk_group"] == expected.at[r["id"], "risk_group"]

    streams = StreamRegistry(model, tolerance=0.5)
    for p in patients[:4]:  # replayed event by event to the end of the window
        state = None
        for e in sorted(p.events, key=lambda e: e["time"]):
            state = streams.update(p.id, [e], static=p.static if state is None else None)
        state = streams.update(p.id, [], now=p.prediction_time)
        assert state.time == p.prediction_time and state.rejected == 0
        assert state.probability == pytest.approx(expected.at[p.id, "probability"], abs=1e-6)
        over_http = client.post(f"/v1/streams/{p.id}/events", json={"events": [dict(e)
                                for e in p.events], "static": p.static, "now": p.prediction_time}, headers=AUTH)
        assert over_http.json()["probability"] == pytest.approx(state.probability, abs=1e-6)


def test_model_card_health_and_openapi(client, model):
    card = client.get("/v1/model", headers=AUTH).json()
    assert card["fingerprint"] == model.card["fingerprint"]
    assert card["data"]["options"] == {"hours": 36.0, "positive_class": 0}
    assert "1 = survived" in card["label"]["description"]
    assert "HR" in card["variables"]
    assert client.get("/v1/health").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    paths, components = schema["paths"], schema["components"]["schemas"]
    assert {"/v1/predict", "/v1/streams/{stream_id}/events", "/v1/model"} <= set(paths)
    # the bodies are validated from raw JSON by the endpoints themselves; the schema still declares them
    for path, name in (("/v1/predict", "PredictRequest"), ("/v1/streams/{stream_id}/events", "StreamEvents")):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{name}"}
    assert components["PredictRequest"]["properties"]["patients"]["items"] == {"$ref": "#/components/schemas/Patient"}
    assert {"time", "variable", "value"} <= set(components["Event"]["properties"])
    assert "PredictResponse" in components and "StreamState" in components


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}])
def test_unauthenticated_requests_are_rejected(client, patients, headers):
    body = {"patients": [json.loads(patients[0].model_dump_json())]}
    response = client.post("/v1/predict", json=body, headers=headers)
    assert response.status_code == 401 and "bearer token" in response.json()["detail"]
    assert client.get("/v1/model", headers=headers).status_code == 401


@pytest.mark.parametrize("patient,loc,message", [
    ({"id": "p1", "events": [{"time": 1.0, "variable": "HR", "value": "high"}]},
     ["body", "patients", 0, "events", 0, "value"], "valid number"),
    ({"id": "p1", "events": [{"time": -1.0, "variable": "HR", "value": 80}]},
     ["body", "patients", 0, "events", 0, "time"], "greater than or equal"),
    ({"id": "p1", "events": [{"time": 1.0, "variable": "HR", "value": 80, "unit": "bpm"}]},
     ["body", "patients", 0, "events", 0, "unit"], "Extra inputs"),
    ({"id": "p1", "events": [{"time": 1.0, "variable": "Urin", "value": 80}]},
     ["body", "patients", 0, "events", 0, "variable"], "Did you mean 'Urine'"),
    ({"id": "p1", "static": {"agee": 71}}, ["body", "patients", 0, "static", "agee"], "Did you mean 'age'"),
    ({"id": "p 1"}, ["body", "patients", 0, "id"], "pattern"),
])
def test_malformed_patients_are_rejected_naming_the_field(client, patient, loc, message):
    response = client.post("/v1/predict", json={"patients": [patient]}, headers=AUTH)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc and message in detail["msg"]


def test_oversized_requests_are_rejected(client, patients):
    one = json.loads(patients[0].model_dump_json())
    many = {"patients": [{**one, "id": f"p{i}", "events": one["events"][:2]} for i in range(51)]}
    response = client.post("/v1/predict", json=many, headers=AUTH)
    assert response.status_code == 413 and "limit is 50" in response.json()["detail"]
    huge = {"patients": [{"id": "p1", "events": [{"time": 1.0, "variable": "HR", "value": 80.0}] * 6000}]}
    response = client.post("/v1/predict", json=huge, headers=AUTH)
    assert response.status_code == 413 and "200000 bytes" in response.json()["detail"]
    assert client.post("/v1/predict", content=b"{not json", headers={**AUTH, "content-type": "application/json"}
                       ).status_code == 422

    def chunked(*parts: bytes):  # no Content-Length: the size is counted as the body arrives
        yield from parts

    body = json.dumps({"patients": [one]}).encode()
    response = client.post("/v1/predict", content=chunked(body[:10], b" " * 250_000, body[10:]), headers=AUTH)
    assert response.status_code == 413 and response.json()["detail"].endswith("200000 bytes.")
    response = client.post("/v1/predict", content=chunked(body[:10], body[10:]), headers=AUTH)
    assert response.status_code == 200 and response.json()["results"][0]["id"] == one["id"]


def test_logs_hold_no_identifiers_or_values(client, patients, caplog):
    body = {"patients": [json.loads(patients[0].model_dump_json())]}
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/predict", json=body, headers=AUTH)
        client.post(f"/v1/streams/{patients[0].id}/events", json={"events": body["patients"][0]["events"][:1]},
                    headers=AUTH)
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))  # server side
    assert "/v1/predict -> 200" in text and "/v1/streams/{stream_id}/events -> 200" in text
    assert patients[0].id not in text and TOKEN not in text
    assert f"{patients[0].events[0]['value']}" not in text


def test_stream_events_out_of_order_within_the_tolerance(model):
    streams = StreamRegistry(model, tolerance=1.0)
    from healthfusion.serve.schemas import Event

    streams.update("s", [Event(time=5.0, variable="HR", value=90.0)])
    state = streams.update("s", [Event(time=4.5, variable="HR", value=95.0), Event(time=3.0, variable="HR",
                                                                                     value=99.0)])
    assert state.n_events == 2 and state.rejected == 1 and state.time == 5.0
    assert np.isfinite(state.probability)
    with pytest.raises(KeyError):
        streams.get("unknown")


def test_read_token(tmp_path):
    with pytest.raises(ValueError, match="HEALTHFUSION_API_TOKEN"):
        read_token(None, {})
    with pytest.raises(ValueError, match="shorter than 16"):
        read_token(None, {"HEALTHFUSION_API_TOKEN": "short"})
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert read_token(path, {}) == TOKEN


@pytest.mark.parametrize("steps,expected", [
    # (risk, time) sequence with on=0.5, off=0.4, cooldown=4 h -> alerting after each step, alerts raised
    ([(0.6, 1), (0.45, 2), (0.55, 3), (0.3, 4), (0.7, 4.5), (0.2, 6), (0.9, 10)],
     ([True, True, True, False, True, False, True], [1, 10])),
    ([(0.5, 0), (0.39, 1), (0.5, 2)], ([True, False, True], [0])),
])
def test_alert_hysteresis(steps, expected):
    from healthfusion.serve.streams import hysteresis

    alerting, last, states, raised = False, None, [], []
    for p, t in steps:
        alerting, now = hysteresis(alerting, p, 0.5, 0.4, t, last, 4.0)
        states.append(alerting)
        if now:
            raised.append(t)
            last = t
    assert (states, raised) == expected


def test_replay_raises_alerts(model, patients):
    from healthfusion.serve.replay import replay
    from healthfusion.serve.streams import AlertPolicy

    policy = AlertPolicy(on=0.05, off=0.04, cooldown=100.0)
    frame = replay(model, patients[:3], step=6.0, policy=policy)
    assert frame["updates"].tolist() == [6, 6, 6]  # 36 h in blocks of 6 h
    assert (frame["n_alerts"] >= 0).all()
    high = frame[frame["final_probability"] >= 0.05]
    assert len(high) and (high["n_alerts"] == 1).all()  # one alert each: the cooldown holds the rest back


def test_a_patient_with_nothing_the_model_reads_gets_a_reason_not_an_error(client, model):
    from healthfusion.serve.streams import StreamRegistry

    response = client.post("/v1/predict", json={"patients": [{"id": "empty"}]}, headers=AUTH)
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert result["probability"] is None and result["status"] != "ok" and result["risk_group"] is None
    state = StreamRegistry(model).update("s", [], static={"age": 70.0})
    assert state.probability is None and state.status != "ok" and not state.alerting


def test_stream_endpoints_limits_and_unknown_ids(model):
    client = TestClient(create_app(model, token=TOKEN, max_streams=1))
    event = {"time": 2.0, "variable": "HR", "value": 90.0}
    assert client.post("/v1/streams/a/events", json={"events": [event]}, headers=AUTH).status_code == 200
    full = client.post("/v1/streams/b/events", json={"events": [event]}, headers=AUTH)
    assert full.status_code == 429 and "--max-streams" in full.json()["detail"]
    assert client.get("/v1/streams/a", headers=AUTH).json()["n_events"] == 1
    assert client.get("/v1/streams/zzz", headers=AUTH).status_code == 404
    assert client.post("/v1/streams/bad id!/events", json={"events": []}, headers=AUTH).status_code == 422
    assert client.delete("/v1/streams/a", headers=AUTH).status_code == 204
    assert client.get("/v1/streams/a", headers=AUTH).status_code == 404
    assert client.post("/v1/streams/b/events", json={"events": [event]}, headers=AUTH).status_code == 200


def test_cli_refuses_to_serve_without_a_token_or_a_model(model_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from healthfusion.cli.main import app

    monkeypatch.delenv("HEALTHFUSION_API_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", str(model_dir)])
    assert result.exit_code == 2 and "HEALTHFUSION_API_TOKEN" in result.output
    monkeypatch.setenv("HEALTHFUSION_API_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing" in result.output
    result = CliRunner().invoke(app, ["serve", str(model_dir), "--backend", "tensorrt"])
    assert result.exit_code == 2 and "Unknown scoring backend" in result.output
    result = CliRunner().invoke(app, ["alerts", str(model_dir), "--path", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--start", "10", "--end", "5"])
    assert result.exit_code == 2 and "start < end" in result.output


def test_onnx_backend_scores_like_torch(model_dir, model, patients):
    pytest.importorskip("onnxruntime")
    onnx = load_model(model_dir, backend="onnx")
    assert onnx.backend == "onnx" and model.backend == "torch"
    body = {"patients": [json.loads(p.model_dump_json()) for p in patients]}
    clients = {name: TestClient(create_app(m, token=None)) for name, m in (("torch", model), ("onnx", onnx))}
    results = {name: c.post("/v1/predict", json=body).json()["results"] for name, c in clients.items()}
    assert [r["status"] for r in results["onnx"]] == [r["status"] for r in results["torch"]]
    scored = [(t["probability"], o["probability"]) for t, o in zip(results["torch"], results["onnx"], strict=True)
              if t["status"] == OK]
    assert len(scored) >= 10
    np.testing.assert_allclose(*zip(*scored, strict=True), atol=1e-5)
    assert clients["onnx"].get("/v1/health").json()["backend"] == "onnx"
    events = {"events": body["patients"][0]["events"], "static": body["patients"][0]["static"]}
    streamed = {name: c.post("/v1/streams/s1/events", json=events).json()["probability"] for name, c in clients.items()}
    assert streamed["onnx"] == pytest.approx(streamed["torch"], abs=1e-5)
    with pytest.raises(ValueError, match="Unknown scoring backend 'tensorrt'"):
        load_model(model_dir, backend="tensorrt")
