"""A real ``healthfusion serve`` process on 127.0.0.1 (free port), started and stopped by the test."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from healthfusion.models.scoring import load_model
from healthfusion.serve.patients import Vocabulary, cohort_patients

TOKEN = "process-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(model_dir, tmp_path):
    port = _free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("HEALTHFUSION_API_TOKEN", None)
    log = tmp_path / "service.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "healthfusion.cli.main", "-v", "serve", str(model_dir),
                                 "--port", str(port), "--token-file", str(token_file)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the service did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_uvicorn_process_scores_streams_and_rejects(service, model_dir, cohort):
    url, log = service
    model = load_model(model_dir)
    patient = cohort_patients(cohort, Vocabulary.of(model), [str(cohort.stay_ids[0])])[0]
    body = {"patients": [json.loads(patient.model_dump_json())]}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{url}/v1/predict", json=body, timeout=30).status_code == 401
    response = httpx.post(f"{url}/v1/predict", json=body, headers=auth, timeout=30)
    assert response.status_code == 200
    expected = model.predict(cohort).set_index("stay_id").at[patient.id, "probability"]
    assert response.json()["results"][0]["probability"] == pytest.approx(expected, abs=1e-6)
    stream = httpx.post(f"{url}/v1/streams/{patient.id}/events", headers=auth, timeout=30,
                        json={"events": body["patients"][0]["events"], "static": patient.static,
                              "now": patient.prediction_time})
    assert stream.json()["probability"] == pytest.approx(expected, abs=1e-6)
    bad = httpx.post(f"{url}/v1/predict", json={"patients": [{"id": "x", "events": [{"time": "soon"}]}]},
                     headers=auth, timeout=30)
    assert bad.status_code == 422
    text = log.read_text()
    assert "/v1/predict -> 200" in text  # its own request log ...
    assert patient.id not in text and TOKEN not in text  # ... without identifiers or the token
