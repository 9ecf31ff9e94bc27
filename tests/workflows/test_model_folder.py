"""The model folder a run saves and the one scoring entry point: load_model(path).predict(cohort) with the data
options, calibrator, threshold and checksums saved in model.json; every ensemble member scores on its own."""

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.data.sources import get_source
from healthfusion.models import load_model as exported_load_model
from healthfusion.models.base import ModelLoadError, load_network
from healthfusion.models.scoring import NO_INPUT, OK, load_model
from healthfusion.workflows.config import load_run_config
from healthfusion.workflows.predict import PredictionError, predict_source
from healthfusion.workflows.train import run_training

HOURS = 36.0  # not the synthetic reader's default (48): the saved option must be used by every scorer
SOURCE_OPTIONS = {"n_stays": 240, "seed": 4}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    cfg = {
        "name": "folder", "out": str(root / "run"),
        "data": {"source": "synthetic", "path": str(root / "raw"), "label": "mortality",
                 "options": {**SOURCE_OPTIONS, "hours": HOURS}},
        "features": {"modalities": ["ts", "static"], "hours": HOURS, "summary_stats": ["last", "mean", "count"]},
        "model": {"hidden": 8},
        "training": {"max_epochs": 2, "batch_size": 32},
        "baselines": ["gradient_boosting"],
        "baseline_params": {"gradient_boosting": {"n_estimators": 30}},
        "ensemble": {"seeds": 2},
        "evaluation": {"n_boot": 20, "audit": False},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return run_training(load_run_config(root / "run.yaml"))


def _test_rows(run, column):
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    return preds[preds["split"] == "test"].set_index("stay_id")[column]


def test_load_model_contract(run, tmp_path):
    assert exported_load_model is load_model
    model = load_model(run / "model")
    assert model.kind == "ensemble"
    assert model.data_source == "synthetic" and model.data_options == {"hours": HOURS}
    cohort = get_source(model.data_source)(tmp_path / "again", **SOURCE_OPTIONS, **model.data_options)
    frame = model.predict(cohort)
    assert list(frame.columns) == ["stay_id", "probability", "risk_group", "status"]
    assert frame["stay_id"].tolist() == [str(s) for s in cohort.stay_ids]  # one row per stay, cohort order
    ok = frame["status"] == OK
    assert ok.any() and set(frame["status"]) <= {OK, NO_INPUT}
    assert frame.loc[~ok, "probability"].isna().all()
    expected = np.where(frame.loc[ok, "probability"] >= model.threshold, "high", "low")
    assert (frame.loc[ok, "risk_group"] == expected).all()
    # the same calibrated numbers as the run's own test predictions
    test = _test_rows(run, "ensemble")
    np.testing.assert_allclose(frame.set_index("stay_id").loc[test.index, "probability"], test, atol=1e-6)

    info = model.info()
    json.dumps(info)  # JSON-serialisable
    assert info["kind"] == "ensemble" and len(info["fingerprint"]) == 64
    assert info["label"]["name"] == "mortality" and info["label"]["kind"] == "binary"
    assert info["threshold"] == 0.5 and info["risk_groups"]["threshold"] == 0.5
    assert info["calibrator"]["method"] in ("none", "temperature", "platt", "isotonic")
    training = info["training"]
    assert training["n"] > 0 and 0 < training["prevalence"] < 1 and len(training["data_sha256"]) == 64
    assert training["prediction_time"] == {"min": HOURS, "median": HOURS, "max": HOURS}
    assert {"min", "p01", "median", "p99", "max", "n_stays"} <= set(training["variables"]["HR"])
    assert "HR" in model.variables and "age" in model.variables


def test_predict_reads_with_the_saved_window_and_refuses_contradictions(run, tmp_path, caplog):
    frame = predict_source(run / "model", "synthetic", tmp_path / "p", **SOURCE_OPTIONS).set_index("stay_id")
    test = _test_rows(run, "ensemble")
    np.testing.assert_allclose(frame.loc[test.index, "probability"], test, atol=1e-6)
    assert frame.attrs["threshold"] == 0.5
    assert "ensemble model" in frame.attrs["model"] and "'hours': 36.0" in frame.attrs["model"]
    with pytest.raises(PredictionError, match="hours=48.0 but the model was trained with hours=36.0"):
        predict_source(run / "model", "synthetic", tmp_path / "p", **SOURCE_OPTIONS, hours=48.0)
    # a cohort read with the reader's default window is scored, and the difference said in one line
    default = get_source("synthetic")(tmp_path / "d", **SOURCE_OPTIONS)
    with caplog.at_level(logging.WARNING):
        load_model(run / "model").predict(default)
    assert any("prediction times (48-48 h) differ" in r.getMessage() for r in caplog.records)


def test_each_ensemble_member_scores_on_its_own(run, tmp_path):
    cohort = get_source("synthetic")(tmp_path / "m", **SOURCE_OPTIONS, hours=HOURS)
    gbm = load_model(run / "model" / "gradient_boosting")
    assert gbm.kind == "gradient_boosting" and gbm.data_options == {"hours": HOURS}
    frame = gbm.predict(cohort).set_index("stay_id")
    raw = _test_rows(run, "gradient_boosting")  # the run's (uncalibrated) boosting column
    np.testing.assert_allclose(frame.loc[raw.index, "probability"], gbm.calibrator.transform(raw.to_numpy()),
                               atol=1e-6)
    for seed in (0, 1):
        net = load_model(run / "model" / f"hybrid-seed{seed}")
        scored = net.predict(cohort)
        assert net.kind == "hybrid" and scored["probability"].dropna().between(0, 1).all()


def test_every_file_is_checked(run, tmp_path):
    def copy():
        target = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(run / "model", target)
        return target

    folder = copy()
    prep = folder / "hybrid-seed0" / "preprocessing.json"
    text = prep.read_text()
    number = next(tok for tok in text.split() if tok.rstrip(",").replace(".", "").replace("-", "").isdigit()
                  and "." in tok)
    prep.write_text(text.replace(number, "123.5" + ("," if number.endswith(",") else ""), 1))
    with pytest.raises(ModelLoadError, match=r"hybrid-seed0/preprocessing.json changed after the model was saved"):
        load_model(folder)
    with pytest.raises(ModelLoadError, match="preprocessing.json was edited after saving"):
        load_network(folder / "hybrid-seed0")  # the network's own loader checks its preprocessing values too

    folder = copy()
    (folder / "gradient_boosting" / "model.txt").write_text("tree\n")
    with pytest.raises(ModelLoadError, match=r"gradient_boosting/model.txt changed"):
        load_model(folder)

    folder = copy()
    card = json.loads((folder / "model.json").read_text())
    card["threshold"] = 0.1
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="model.json was edited after saving"):
        load_model(folder)

    folder = copy()
    (folder / "model.json").unlink()
    with pytest.raises(ModelLoadError, match="re-run `healthfusion train CONFIG`"):
        load_model(folder)


def test_a_run_folder_is_pointed_to_its_model(run, tmp_path):
    with pytest.raises(ModelLoadError, match=r"is a run folder, not a model folder; use .*model"):
        load_model(run)
    result = CliRunner().invoke(app, ["predict", "--model", str(run), "--source", "synthetic",
                                      "--path", str(tmp_path / "x"), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 2
    assert f"use {run / 'model'}" in " ".join(result.output.split())


def test_a_model_trained_with_another_positive_class_is_scored_with_it(tmp_path):
    """MedMNIST positive_class=0 (BreastMNIST: malignant): predict must label and score class 0 as positive."""
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 80, (n, 28, 28)) + np.where(labels == 0, 120, 0)[:, None, None]
        return images.astype(np.uint8), labels[:, None]

    arrays = {}
    for name, n in (("train", 160), ("val", 40), ("test", 60)):
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = split(n)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    cfg = {"name": "pos", "out": str(tmp_path / "run"),
           "data": {"source": "medmnist", "path": str(tmp_path / "breastmnist.npz"), "label": "label",
                    "options": {"positive_class": 0, "split": "train"}},
           "features": {"modalities": ["image"]}, "model": {"hidden": 8},
           "training": {"max_epochs": 3, "batch_size": 32}, "baselines": [],
           "evaluation": {"n_boot": 20, "audit": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run_dir = run_training(load_run_config(tmp_path / "run.yaml"))
    assert load_model(run_dir / "model").data_options == {"positive_class": 0}
    frame = predict_source(run_dir / "model", "medmnist", tmp_path / "breastmnist.npz", split="test")
    np.testing.assert_array_equal(frame["y_true"], (arrays["test_labels"][:, 0] == 0).astype(int))
    from healthfusion.evaluation.metrics import auroc

    assert auroc(frame["y_true"], frame["probability"]) > 0.8  # the bright class scored as the positive one


def test_a_network_of_another_workflow_gets_a_message_naming_its_loader(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "multitask"}))
    with pytest.raises(ModelLoadError, match="holds a 'multitask' network without model.json.*load_network"):
        load_model(tmp_path)
