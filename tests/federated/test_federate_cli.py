"""healthfusion federate: simulation on a synthetic multi-site cohort, the global model scored by predict, errors."""

import json

import pandas as pd
import yaml
from typer.testing import CliRunner

from healthfusion.cli.main import app

runner = CliRunner()


def write_config(tmp_path, **federated):
    config = {
        "name": "fl", "out": str(tmp_path / "run"),
        "data": {"source": "synthetic", "path": str(tmp_path / "cohort"), "label": "mortality",
                 "options": {"n_stays": 240, "seed": 1}},
        "features": {"modalities": ["static"]},
        "model": {"hidden": 8},
        "training": {"max_epochs": 1, "batch_size": 32, "lr": 0.01},
        "federated": {"rounds": 2, "compare_epochs": 2, "min_sites": 2, **federated},
        "n_boot": 50,
    }
    path = tmp_path / "FL.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_federate_simulation_writes_run_and_predict_loads_the_model(tmp_path):
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, personalize_epochs=1))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary["setting"][:3]) == ["fedavg", "fedavg+finetune", "pooled"]
    assert {"local A", "local B", "local C", "local D"} <= set(summary["setting"])
    assert summary["epsilon"].isna().all()
    assert summary["mean_client_accuracy"].between(0, 1).all() and summary["auroc"].between(0, 1).all()
    assert (summary["auroc_ci_low"] <= summary["auroc"]).all()
    assert summary["ece"].between(0, 1).all() and (summary["ece_ci_low"] <= summary["ece"]).all()
    assert summary[["cal_slope", "cal_intercept"]].notna().all().all()  # calibration beside AUROC
    rounds = pd.read_csv(run / "rounds.csv")
    assert rounds["round"].tolist() == [1, 2] and rounds["sites"].tolist() == ["A;B;C;D"] * 2
    metrics = pd.read_csv(run / "site_metrics.csv")
    assert set(metrics["site"]) == {"A", "B", "C", "D"} and set(metrics["round"]) == {1, 2}
    assert json.loads((run / "server_state" / "server_state.json").read_text())["round"] == 2
    out = tmp_path / "scores.csv"
    scored = runner.invoke(app, ["predict", "--model", str(run / "model"), "--source", "synthetic", "--path",
                                 str(tmp_path / "cohort2"), "--out", str(out)])
    assert scored.exit_code == 0, scored.output
    probs = pd.read_csv(out)["probability"]
    assert len(probs) > 0 and probs.between(0, 1).all()


def test_federate_bad_site_column_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, site_column="hospital"))])
    assert result.exit_code == 2
    assert "federated.site_column 'hospital' is not a column" in result.output
    result = runner.invoke(app, ["federate", "--config", str(write_config(tmp_path, rounds=0))])
    assert result.exit_code == 2 and "federated.rounds" in result.output
