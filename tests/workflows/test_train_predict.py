import json

import numpy as np
import pandas as pd
import pytest
import yaml

from healthfusion.data import synthetic
from healthfusion.models.base import ModelLoadError
from healthfusion.models.scoring import NO_INPUT
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.evaluate import evaluate_predictions
from healthfusion.workflows.predict import PredictionError, predict_source
from healthfusion.workflows.train import run_training
from tests.workflows.conftest import rescore_test_stays


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    synthetic.write(root / "cohort", n_stays=300, seed=2)
    cfg = {
        "name": "tiny", "out": str(root / "run"),
        "data": {"cohort": "cohort", "label": "mortality"},
        "features": {"modalities": ["ts", "static", "text"], "summary": True},  # the wide input, saved and reused
        "model": {"hidden": 8},
        "training": {"max_epochs": 2, "batch_size": 32},
        "baselines": ["logistic_regression"],
        "evaluation": {"n_boot": 50},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return run_training(load_run_config(root / "run.yaml")), root


def test_train_writes_a_complete_run_folder(trained_run):
    run, _ = trained_run
    for name in ("config.yaml", "predictions.csv", "comparison.csv", "metrics.json", "roc.png", "pr.png",
                 "history.json", "accounting.csv", "model/config.json", "model/model.safetensors",
                 "model/preprocessing.json"):
        assert (run / name).is_file(), name
    preds = pd.read_csv(run / "predictions.csv")
    assert set(preds["split"]) == {"val", "test"}
    assert {"hybrid", "logistic_regression"} <= set(preds.columns)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["comparison"]) == {"hybrid", "logistic_regression"}
    assert metrics["n"] == int((preds["split"] == "test").sum())
    assert "summary" in (run / "model" / "preprocessing.json").read_text()  # predict re-applies the wide input
    acc = pd.read_csv(run / "accounting.csv")  # one cohort, each input table counted once
    assert list(acc["cohort"].unique()) == ["main (train, val, test)"]
    assert not acc.duplicated(["table", "outcome"]).any()


def test_evaluate_recomputes_the_same_table(trained_run):
    run, _ = trained_run
    before = pd.read_csv(run / "comparison.csv", index_col=0)
    evaluate_predictions(run, n_boot=50)
    after = pd.read_csv(run / "comparison.csv", index_col=0)
    pd.testing.assert_frame_equal(before, after)


def test_predict_scores_raw_source_and_marks_unusable_rows(trained_run, tmp_path):
    run, _ = trained_run
    frame = predict_source(run / "model", "synthetic", tmp_path / "new", n_stays=60, seed=9)
    assert len(frame) == 60 and set(frame["status"]) <= {"ok", NO_INPUT}
    scored = frame[frame["status"] == "ok"]
    assert scored["probability"].between(0, 1).all()
    assert set(scored["risk_group"]) <= {"high", "low"}
    assert frame.loc[frame["status"] != "ok", "probability"].isna().all()


def test_predict_rejects_corrupted_model(trained_run, tmp_path):
    run, _ = trained_run
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(run / "model", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        predict_source(broken, "synthetic", tmp_path / "new", n_stays=60)


def test_predict_rejects_mismatched_variables(trained_run):
    run, _ = trained_run
    from healthfusion.data.cohort import Cohort
    from healthfusion.models.scoring import load_model

    model = load_model(run / "model")
    stays = pd.DataFrame({"stay_id": ["a"], "patient_id": ["p"], "prediction_time": [48.0]})
    events = pd.DataFrame({"stay_id": ["a"], "time": [1.0], "variable": ["Foo"], "value": [1.0]})
    with pytest.raises(PredictionError, match="None of the model's"):
        model.predict(Cohort(stays, events=events))
    with pytest.raises(PredictionError, match="none of the model's modalities"):
        model.predict(Cohort(stays))


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"cohort": "x", "label": "y"}, "modle": {}}))
    with pytest.raises(ConfigError, match="modle"):
        load_run_config(path)
    path.write_text(yaml.safe_dump({"data": {"cohort": "x", "label": "y"}, "baselines": ["xgb"]}))
    with pytest.raises(ConfigError, match="unknown baseline"):
        load_run_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.yaml")
    path.write_text(yaml.safe_dump({"data": {"source": "physionet2012", "label": "in_hospital_death"}}))
    with pytest.raises(ConfigError, match="source 'physionet2012' needs 'path'"):
        load_run_config(path)


def test_invalid_yaml_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data: {cohort: x}\nmodel: b: c\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: mapping values are not allowed here \(line 2, column 9\)") as info:
        load_run_config(path)
    assert "\n" not in str(info.value)


def test_stays_without_any_model_modality_get_no_score(trained_run, tmp_path):
    _, root = trained_run
    cfg = {
        "out": str(tmp_path / "run"), "data": {"cohort": str(root / "cohort"), "label": "mortality"},
        "features": {"modalities": ["image"]}, "model": {"hidden": 8},
        "training": {"max_epochs": 1}, "baselines": [], "evaluation": {"n_boot": 20},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = run_training(load_run_config(tmp_path / "run.yaml"))
    preds = pd.read_csv(run / "predictions.csv")
    test = preds[preds["split"] == "test"]
    assert test["hybrid"].isna().any(), "some synthetic stays have no image"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["models_without_score"]["hybrid"] == int(test["hybrid"].isna().sum())
    assert metrics["comparison"]["hybrid"]["n"] == int(test["hybrid"].notna().sum())


def test_a_run_is_reproducible_whatever_used_the_generator_before(trained_run, tmp_path):
    import torch

    run, root = trained_run
    torch.rand(1000)  # other work in the same process draws from torch's global generator
    cfg = yaml.safe_load((root / "run.yaml").read_text())
    cfg["out"], cfg["data"]["cohort"] = str(tmp_path / "again"), str(root / "cohort")
    cfg["evaluation"]["audit"] = False
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    again = run_training(load_run_config(tmp_path / "run.yaml"))
    first, second = pd.read_csv(run / "predictions.csv"), pd.read_csv(again / "predictions.csv")
    pd.testing.assert_series_equal(first["hybrid"], second["hybrid"])


@pytest.mark.parametrize("label, kind", [("diagnoses", "multilabel")])
def test_a_non_binary_label_is_a_clear_error(trained_run, tmp_path, label, kind):
    _, root = trained_run
    cfg = {"out": str(tmp_path / "run"), "data": {"cohort": str(root / "cohort"), "label": label}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=f"{label!r} is {kind}.*healthfusion multitask.*mortality"):
        run_training(load_run_config(tmp_path / "run.yaml"))



def test_an_unknown_label_names_the_labels_the_cohort_has(trained_run):
    _, root = trained_run
    path = root / "unknown-label.yaml"
    path.write_text(yaml.safe_dump({"data": {"cohort": "cohort", "label": "mortalty"}, "out": str(root / "x")}))
    with pytest.raises(ValueError, match="has no label 'mortalty'; it has: mortality"):
        run_training(load_run_config(path))


def test_predict_reproduces_the_runs_test_scores(trained_run, tmp_path):
    run, _ = trained_run
    # the saved model (wide input included, its state stored with sorted keys) must score the stays as the run did
    frame, test = rescore_test_stays(run, tmp_path)
    np.testing.assert_allclose(frame.loc[test.index, "probability"], test["hybrid"], atol=1e-6)


def test_external_validation_uses_scored_labelled_rows_only():
    from healthfusion.evaluation.metrics import auroc
    from healthfusion.workflows.predict import external_validation

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    frame = pd.DataFrame({"stay_id": [f"s{i}" for i in range(200)], "probability": 0.3 * y + 0.7 * rng.random(200),
                          "status": "ok", "y_true": y})
    frame.loc[:9, ["probability", "status"]] = [np.nan, NO_INPUT]
    frame.loc[10:14, "y_true"] = np.nan
    table, title = external_validation(frame, n_boot=20)
    assert "n = 185" in title
    kept = frame.iloc[15:]
    assert table.set_index("metric").loc["auroc", "value"] == pytest.approx(auroc(kept["y_true"], kept["probability"]))
    assert {"ece", "cal_slope", "cal_intercept"} <= set(table["metric"])
    assert external_validation(frame.drop(columns="y_true")) is None


def test_run_tables_carry_calibration_and_the_difference_from_the_best_baseline(trained_run):
    run, _ = trained_run
    table = pd.read_csv(run / "comparison.csv", index_col=0)
    assert {"ece", "cal_slope", "cal_intercept", "ece_ci_low"} <= set(table.columns)
    diff = pd.read_csv(run / "comparison_difference.csv", index_col=0)
    assert list(diff.index) == ["hybrid"] and diff.loc["hybrid", "reference"] == "logistic_regression"
    assert diff.loc["hybrid", "auroc_diff"] == pytest.approx(table.loc["hybrid", "auroc"]
                                                             - table.loc["logistic_regression", "auroc"])
    assert diff.loc["hybrid", "auroc_diff_ci_low"] <= diff.loc["hybrid", "auroc_diff"] \
        <= diff.loc["hybrid", "auroc_diff_ci_high"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "hybrid" in metrics["difference_vs_best_baseline"] and "hybrid" in metrics["calibrators"]


def test_evaluate_on_a_truncated_predictions_file_is_one_line_naming_it(trained_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from healthfusion.cli.main import app

    run, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "predictions.csv"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # cut in the middle of a line, as an interrupted copy leaves it
    result = CliRunner().invoke(app, ["evaluate", str(copy), "--n-boot", "10"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert str(path) in flat and "changed after the run wrote it" in flat  # the run's record catches it first
    (copy / "artefacts.json").unlink()  # a folder without the record (e.g. copied without it): the reader's error
    result = CliRunner().invoke(app, ["evaluate", str(copy), "--n-boot", "10"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    flat = " ".join(result.output.split())
    assert str(path) in flat and "truncated" in flat
    lines = text.splitlines()
    path.write_text("\n".join(lines[:5] + [lines[5].split(",")[0]]) + "\n")  # a row cut after its first field
    with pytest.raises(ValueError, match=r"predictions.csv line 6 has no y_true"):
        evaluate_predictions(copy, n_boot=10)
