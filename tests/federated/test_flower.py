"""Flower deployment over loopback: a server and three site processes; one site is killed mid-round."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

SCRIPT = Path(__file__).with_name("flower_process.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args, log):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT)


def wait_for(predicate, seconds: float, what: str):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_deployment_survives_a_killed_site_and_resumes(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    state = tmp_path / "state"
    state.mkdir()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "a", "b", "c")}
    procs = {}
    try:
        procs["server"] = start("server", address, state, 3, 2, log=logs["server"])
        for name in ("a", "b"):
            procs[name] = start("site", address, name, -1, log=logs[name])
        procs["c"] = start("site", address, "c", 2, log=logs["c"])  # sleeps in round 2
        wait_for(lambda: "slow in round 2" in (tmp_path / "c.log").read_text(), 120, "site c to start round 2")
        procs["c"].kill()
        procs["server"].wait(timeout=120)
        for name in ("a", "b"):
            procs[name].wait(timeout=30)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
    result = json.loads((state / "result.json").read_text())
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3], (tmp_path / "server.log").read_text()[-3000:]
    assert sorted(rounds[0]["sites"]) == ["a", "b", "c"]
    assert sorted(rounds[1]["sites"]) == ["a", "b"] and len(rounds[1]["failed"]) == 1 and rounds[1]["aggregated"]
    assert sorted(rounds[2]["sites"]) == ["a", "b"]
    assert {m["site"] for m in result["site_metrics"]} >= {"a", "b"}
    # a restarted server with all rounds done resumes after round 3 and has nothing left to run
    saved = json.loads((state / "server_state.json").read_text())
    assert saved["round"] == 3
    from healthfusion.federated.flower import serve
    from healthfusion.federated.server import FederatedConfig

    from .helpers import TinyLogistic

    server, _, temperatures = serve(address, TinyLogistic(), FederatedConfig(rounds=3, min_sites=2, round_timeout=60), state)
    assert server.round == 3 and len(server.rounds) == 3 and temperatures == {}


@pytest.mark.slow
def test_deployment_calibrates_the_global_model_like_the_simulation(tmp_path):
    """Three site processes with validation samples send their temperatures with the last evaluation; the server's
    weights and federated temperature equal the in-process simulation's within 1e-5 (FedAvg sums the sites in
    arrival order, so only float rounding may differ)."""
    import numpy as np
    import torch

    from healthfusion.federated.calibration import calibrate_federated, combine_temperatures
    from healthfusion.federated.server import FederatedConfig, run_rounds

    from .flower_process import LOCAL, SITES
    from .helpers import TinyLogistic, make_site

    address = f"127.0.0.1:{free_port()}"
    state = tmp_path / "state"
    state.mkdir()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "a", "b", "c")}
    procs = {}
    try:
        procs["server"] = start("server", address, state, 2, 3, log=logs["server"])
        for name in ("a", "b", "c"):
            procs[name] = start("site", address, name, -1, "val", log=logs[name])
        procs["server"].wait(timeout=180)
        for name in ("a", "b", "c"):
            procs[name].wait(timeout=30)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
    result = json.loads((state / "result.json").read_text())
    assert [sorted(r["sites"]) for r in result["rounds"]] == [["a", "b", "c"]] * 2, \
        (tmp_path / "server.log").read_text()[-3000:]
    deployed, deployed_sites = combine_temperatures({k: v and tuple(v) for k, v in result["temperatures"].items()})

    torch.manual_seed(0)
    model = TinyLogistic()
    sites = [make_site(name, *SITES[name], val=True) for name in ("a", "b", "c")]
    simulated = run_rounds(model, sites, FederatedConfig(rounds=2, min_sites=3), LOCAL)
    calibrator, per_site = calibrate_federated(model, sites)
    for got, want in zip(result["weights"], simulated.weights, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    assert {k: v["n_val"] for k, v in deployed_sites.items()} == {k: v["n_val"] for k, v in per_site.items()}
    for name in per_site:
        assert deployed_sites[name]["temperature"] == pytest.approx(per_site[name]["temperature"], abs=1e-5)
    assert deployed.params_["temperature"] == pytest.approx(calibrator.params_["temperature"], abs=1e-5)
    assert abs(calibrator.params_["temperature"] - 1.0) > 1e-3  # a temperature that calibrates something


@pytest.mark.slow
def test_flower_ray_simulation_aggregates_every_site(monkeypatch):
    pytest.importorskip("ray")
    import torch

    from healthfusion.federated.flower import simulate
    from healthfusion.federated.server import FederatedConfig
    from healthfusion.training import TrainerConfig

    from .helpers import TinyLogistic, make_site

    def model_fn():
        torch.manual_seed(0)
        return TinyLogistic()

    # Ray workers unpickle the test model by its module name (pytest names it from the tests folder)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                                      os.environ.get("PYTHONPATH", "")]))
    sites = [make_site("a", 60, 0.0, 1), make_site("b", 40, 0.5, 2)]
    server, metrics, temperatures = simulate(model_fn, sites, FederatedConfig(rounds=2),
                               TrainerConfig(max_epochs=1, batch_size=16, lr=0.05))
    assert [sorted(r["sites"]) for r in server.rounds] == [["a", "b"], ["a", "b"]], server.rounds
    assert all(r["aggregated"] and r["n_samples"] == 100 for r in server.rounds)
    assert {m["site"] for m in metrics} == {"a", "b"}
    assert temperatures == {"a": None, "b": None}  # no validation samples: each site says it sent nothing
    import ray

    assert not ray.is_initialized()  # Flower's engine starts Ray; simulate stops it (no Ray left to later work)
