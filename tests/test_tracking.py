"""MLflow tracking: a trained run appears in a local SQLite store with params, metrics with CIs and the model."""

import mlflow
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.data import synthetic
from healthfusion.tracking import TrackingError, default_uri, flatten, track_run
from healthfusion.workflows.config import load_run_config
from healthfusion.workflows.train import run_training

runner = CliRunner()


pytestmark = pytest.mark.slow  # MLflow's SQLite store takes ~15 s to create on a 2-core host


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("track")
    synthetic.write(root / "cohort", n_stays=200, seed=3)
    cfg = {"name": "tracked", "out": str(root / "runs" / "tiny"),
           "data": {"cohort": "cohort", "label": "mortality"}, "model": {"hidden": 8},
           "training": {"max_epochs": 1, "batch_size": 32}, "baselines": ["logistic_regression"],
           "evaluation": {"n_boot": 20, "audit": False}, "tracking": {}}
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return run_training(load_run_config(root / "run.yaml"))


def _client(run_dir):
    return mlflow.MlflowClient(tracking_uri=default_uri(run_dir))


def _artifacts(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_train_with_tracking_records_the_run_in_a_local_sqlite_store(tracked_run):
    assert (tracked_run.parent / "mlflow.db").is_file()
    client = _client(tracked_run)
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["training.max_epochs"] == "1" and run.data.params["model.hidden"] == "8"
    m = run.data.metrics
    assert m["hybrid.auroc_ci_low"] <= m["hybrid.auroc"] <= m["hybrid.auroc_ci_high"]
    assert m["hybrid.n"] > 0 and "logistic_regression.auroc" in m
    files = _artifacts(client, run.info.run_id)
    assert "run/model/model.safetensors" in files and "run/model/config.json" in files
    assert "run/roc.png" in files and "run/predictions.csv" in files
    req = client.download_artifacts(run.info.run_id, "environment/requirements.txt")
    text = open(req).read()
    assert "torch>=" in text and "+cpu" not in text and "==" not in text


def test_cli_track_logs_an_existing_folder(tracked_run, tmp_path):
    result = runner.invoke(app, ["track", str(tracked_run), "--experiment", "again", "--no-log-model"])
    assert result.exit_code == 0, result.output
    client = _client(tracked_run)
    run = client.search_runs([client.get_experiment_by_name("again").experiment_id])[0]
    files = _artifacts(client, run.info.run_id)
    assert not any(f.startswith("run/model/") for f in files) and "run/comparison.csv" in files
    missing = runner.invoke(app, ["track", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    with pytest.raises(TrackingError, match="does not exist"):
        track_run(tmp_path / "nope")


def test_flatten_keeps_every_setting():
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"}) == {
        "a.b": "1", "a.c": "[1, 2]", "a.d": "null", "e": "x"}


def test_result_tables_of_every_run_kind_become_metrics(tmp_path):
    from healthfusion.tracking import run_metrics

    pd.DataFrame({"model": ["hybrid"], "auroc": [0.8], "auroc_ci_low": [0.7], "n": [100]}).to_csv(
        tmp_path / "comparison.csv", index=False)
    pd.DataFrame({"strategy": ["finetune", "finetune"], "size": [100, "all"], "auroc": [0.75, 0.8]}).to_csv(
        tmp_path / "summary.csv", index=False)
    (tmp_path / "metrics.json").write_text('{"seconds": 12.5, "label": "death", "ok": true}')
    assert run_metrics(tmp_path) == {"hybrid.auroc": 0.8, "hybrid.auroc_ci_low": 0.7, "hybrid.n": 100.0,
                                     "summary.finetune.100.auroc": 0.75, "summary.finetune.all.auroc": 0.8,
                                     "run.seconds": 12.5}


def test_multitask_track_option_records_its_tables(tmp_path):
    from healthfusion.data.synthetic import generate

    generate(120, seed=1).save(tmp_path / "cohort")
    cfg = {"name": "mt", "out": str(tmp_path / "runs" / "mt"), "data": {"cohort": str(tmp_path / "cohort")},
           "features": {"modalities": ["ts", "static"], "hours": 48, "step": 8},
           "tasks": [{"name": "death", "kind": "binary", "source": {"label": "mortality"}},
                     {"name": "los", "kind": "regression", "source": {"label": "los_days"}}],
           "model": {"hidden": 4, "task_dim": 4}, "training": {"max_epochs": 1, "batch_size": 32},
           "tim": {"ablation": "none"}, "n_boot": 10}
    (tmp_path / "mt.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["multitask", "--config", str(tmp_path / "mt.yaml"), "--track"])
    assert result.exit_code == 0, result.output
    assert "MLflow run" in result.output
    client = _client(tmp_path / "runs" / "mt")
    run = client.search_runs([client.get_experiment_by_name("mt").experiment_id])[0]
    assert any(k.startswith("tasks.death") for k in run.data.metrics) and run.data.params["tasks"]
