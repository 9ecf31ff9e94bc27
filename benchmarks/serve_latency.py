"""Serving latency on loopback: a real ``healthfusion serve`` process, this process as the load generator.

For each backend (``--backends``, default torch and onnx: one service each, one after the other) measures
single-patient end-to-end latency over HTTP (p50/p99, sequential requests), batch throughput (patients/s in
requests of ``--batch`` patients), stream update latency per event (one event per POST) and the number of 5xx
answers. Then, in this process, the scoring path of a request (arrays straight to the fitted transformers,
``predict_records``) against the reference measured in the same run, the same patients built into a cohort and
scored with ``predict`` (what the service did before), and the network forward alone with torch vs onnxruntime on
the same featurized batch (ratios printed).

    python benchmarks/serve_latency.py --model RUN/model --path ../shared/data/physionet2012/set-b.tar.gz \
        --n-patients 200 --requests 200 --batch 100 --events 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from healthfusion.data.sources import get_source  # noqa: E402
from healthfusion.models.base import load_network  # noqa: E402
from healthfusion.models.export import OnnxScorer, export_onnx  # noqa: E402
from healthfusion.models.scoring import load_model  # noqa: E402
from healthfusion.serve.patients import Vocabulary, cohort_patients, score_patients  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOG = Path(tempfile.gettempdir()) / "healthfusion-serve-latency.log"  # the service's own log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(ms: list[float]) -> str:
    return f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms (n = {len(ms)})"


def start_service(model: Path, token: str, backend: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "HEALTHFUSION_API_TOKEN": token, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "healthfusion.cli.main", "serve", str(model), "--port", str(port),
                             "--max-batch", "5000", "--max-body-bytes", "50000000", "--backend", backend],
                            stdout=subprocess.DEVNULL, stderr=open(LOG, "w"), env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the service did not start within 180 s")


def http_benchmarks(url: str, token: str, bodies: list[dict], args) -> dict:
    client = httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    errors = 0
    # the floor of the HTTP stack: a request that scores nothing (uvicorn, FastAPI routing, this client)
    for _ in range(5):
        client.get("/v1/health")
    floor = []
    for _ in range(args.requests):
        t = time.perf_counter()
        client.get("/v1/health")
        floor.append((time.perf_counter() - t) * 1000)
    # request bodies encoded before the clock starts: the generator's own JSON encoding is not the service's time
    single: dict[int, list[float]] = {}
    for top_k in (0, args.top_k):  # without and with the top contributing features
        singles = [json.dumps({"patients": [body], "top_k": top_k}).encode() for body in bodies]
        for body in singles[:5]:  # warm-up
            client.post("/v1/predict", content=body)
        single[top_k] = []
        for i in range(args.requests):
            t = time.perf_counter()
            r = client.post("/v1/predict", content=singles[i % len(singles)])
            single[top_k].append((time.perf_counter() - t) * 1000)
            errors += r.status_code >= 500
    batch = [dict(b, id=f"b{i}") for i, b in enumerate((bodies * (args.batch // len(bodies) + 1))[:args.batch])]
    encoded = json.dumps({"patients": batch, "top_k": 0}).encode()
    start, n = time.perf_counter(), 0
    for _ in range(args.batch_requests):
        r = client.post("/v1/predict", content=encoded)
        errors += r.status_code >= 500
        n += len(batch)
    throughput = n / (time.perf_counter() - start)
    events = sorted(bodies[0]["events"], key=lambda e: e["time"])[: args.events]
    client.post("/v1/streams/bench/events", json={"events": [], "static": bodies[0]["static"]})
    stream = []
    for e in [json.dumps({"events": [e]}).encode() for e in events]:
        t = time.perf_counter()
        r = client.post("/v1/streams/bench/events", content=e)
        stream.append((time.perf_counter() - t) * 1000)
        errors += r.status_code >= 500
    return {"single": single, "throughput": throughput, "stream": stream, "errors": errors, "floor": floor}


def path_benchmark(model, patients, batch: int, repeats: int) -> list[tuple[str, float, float]]:
    """(label, cohort path ms, array path ms) per call for one patient and for ``batch`` patients, in process."""
    from healthfusion.serve.patients import patients_records

    vocabulary = Vocabulary.of(model)
    logging.getLogger("healthfusion.models.scoring").setLevel(logging.ERROR)  # predict's per-call notes
    out = []
    for label, group in (("1 patient", patients[:1]), (f"{batch} patients", patients[:batch])):
        records = patients_records(group, vocabulary)
        times = []
        for score in (lambda r=records: model.predict(r.to_cohort()), lambda r=records: model.predict_records(r)):
            score()
            t = time.perf_counter()
            for _ in range(repeats):
                score()
            times.append((time.perf_counter() - t) * 1000 / repeats)
        out.append((label, *times))
    return out


def request_breakdown(model, patients, repeats: int) -> list[tuple[str, float]]:
    """(step, ms) of one single-patient ``/v1/predict`` request's work in process, step by step (the service's own
    functions, in its order): where the time of a request goes, apart from HTTP."""
    from healthfusion.serve.patients import patients_records
    from healthfusion.serve.schemas import PredictRequest, PredictResponse

    vocabulary = Vocabulary.of(model)
    raw = json.dumps({"patients": [json.loads(patients[0].model_dump_json())], "top_k": 0}).encode()
    body = PredictRequest.model_validate_json(raw)
    records = patients_records(body.patients, vocabulary)
    data = model.featurizer.transform_records(records)
    results = score_patients(model, body.patients, vocabulary)
    steps = [("validate the JSON body", lambda: PredictRequest.model_validate_json(raw)),
             ("events -> arrays", lambda: patients_records(body.patients, vocabulary)),
             ("featurize (grid, static)", lambda: model.featurizer.transform_records(records)),
             ("network + calibrator + risk group", lambda: model.score_records(records, data)),
             ("answer as JSON", lambda: PredictResponse(model="m", results=results).model_dump_json())]
    out = []
    for name, step in steps:
        step()
        t = time.perf_counter()
        for _ in range(repeats):
            step()
        out.append((name, (time.perf_counter() - t) * 1000 / repeats))
    return out


def forward_benchmark(model_dir: Path, cohort, ids: list[str], repeats: int) -> tuple[float, float, float]:
    """(torch ms, onnxruntime ms, max |difference|) of the network forward on one featurized batch."""
    scoring = load_model(model_dir)
    network, _ = load_network(model_dir)
    network.eval()
    data = scoring.featurizer.transform(cohort, ids, with_target=False)
    batch = data[data.usable_rows()].batch()
    with tempfile.TemporaryDirectory() as tmp:
        scorer = OnnxScorer(export_onnx(network, batch, Path(tmp) / "model.onnx"), network,
                            threads=torch.get_num_threads())
        with torch.no_grad():
            ref = network(batch)["logits"].numpy()
            t = time.perf_counter()
            for _ in range(repeats):
                network(batch)
            torch_ms = (time.perf_counter() - t) * 1000 / repeats
        got = scorer.logits(batch)
        t = time.perf_counter()
        for _ in range(repeats):
            scorer.logits(batch)
        ort_ms = (time.perf_counter() - t) * 1000 / repeats
    return torch_ms, ort_ms, float(np.abs(got - ref).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a hybrid model folder (RUN/model)")
    parser.add_argument("--path", type=Path, required=True, help="raw files of the model's source")
    parser.add_argument("--n-patients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200, help="sequential single-patient requests")
    parser.add_argument("--batch", type=int, default=100, help="patients per batch request")
    parser.add_argument("--batch-requests", type=int, default=10)
    parser.add_argument("--events", type=int, default=200, help="stream updates of one event each")
    parser.add_argument("--repeats", type=int, default=20, help="in-process repeats (scoring paths, forward passes)")
    parser.add_argument("--top-k", type=int, default=5, help="top features per patient in the second single run")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = load_model(args.model)
    cohort = get_source(model.data_source)(args.path, **model.data_options)
    ids = [str(s) for s in cohort.stay_ids[: args.n_patients]]
    patients = cohort_patients(cohort, Vocabulary.of(model), ids)
    bodies = [json.loads(p.model_dump_json()) for p in patients]
    token = secrets.token_urlsafe(32)
    for backend in args.backends:
        proc, url = start_service(args.model, token, backend)
        try:
            http = http_benchmarks(url, token, bodies, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(f"[{backend}] GET /v1/health over HTTP (the HTTP stack alone): {_pct(http['floor'])}")
        for top_k, ms in http["single"].items():
            print(f"[{backend}] single patient over HTTP, top_k {top_k}: {_pct(ms)}")
        print(f"[{backend}] batch of {args.batch} over HTTP, top_k 0: {http['throughput']:.0f} patients/s")
        print(f"[{backend}] stream update, one event per POST: {_pct(http['stream'])}")
        print(f"[{backend}] 5xx answers: {http['errors']}")
    for label, cohort_ms, array_ms in path_benchmark(model, patients, args.batch, args.repeats):
        print(f"scoring {label} in process: via a cohort {cohort_ms:.1f} ms, from arrays {array_ms:.1f} ms "
              f"(ratio {cohort_ms / array_ms:.1f})")
    breakdown = request_breakdown(model, patients, args.repeats * 5)
    print("one patient's request in process (torch): " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in breakdown)
          + f"; total {sum(ms for _, ms in breakdown):.2f} ms")
    torch_ms, ort_ms, diff = forward_benchmark(args.model, cohort, ids, args.repeats)
    print(f"network forward on {len(ids)} patients: torch {torch_ms:.1f} ms, onnxruntime {ort_ms:.1f} ms "
          f"(ratio torch/onnxruntime {torch_ms / ort_ms:.2f}; max |logit difference| {diff:.1e})")


if __name__ == "__main__":
    main()
