import io
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

from healthfusion.data import synthetic
from healthfusion.evaluation.metrics import multiclass_metrics, regression_metrics
from healthfusion.models.classical import make_regression_baseline
from healthfusion.workflows.config import load_run_config
from healthfusion.workflows.evaluate import KIND_METRICS, display_comparison, evaluate_predictions
from healthfusion.workflows.predict import external_validation, predict_source
from healthfusion.workflows.report import build_report
from healthfusion.workflows.train import run_training

LABELS = {"multiclass": "phenotype", "regression": "los_days"}


def _config(root, label, out, **extra):
    cfg = {"name": f"tiny-{label}", "out": str(out), "data": {"cohort": str(root / "cohort"), "label": label},
           "features": {"modalities": ["ts", "static"]}, "model": {"hidden": 8},
           "training": {"max_epochs": 2, "batch_size": 32},
           "baselines": ["logistic_regression", "random_forest", "gradient_boosting"],
           "baseline_params": {"random_forest": {"n_estimators": 30}}, "evaluation": {"n_boot": 30}, **extra}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_run_config(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    synthetic.write(root / "cohort", n_stays=300, seed=2)
    console = Console(file=io.StringIO(), width=200)
    runs = {kind: run_training(_config(root, label, root / kind), console=console) for kind, label in LABELS.items()}
    return runs, root, console.file.getvalue()


@pytest.fixture(scope="module")
def classes():
    return list(synthetic.PHENOTYPES)


def _reference(kind, test, model, classes):
    if kind == "multiclass":
        y = pd.Index(classes).get_indexer(test["y_true"])
        return multiclass_metrics(y, test[[f"{model}:p_{c}" for c in classes]].to_numpy())
    return regression_metrics(test["y_true"].to_numpy(), test[model].to_numpy())


@pytest.mark.parametrize("kind", list(LABELS))
def test_a_run_writes_its_folder_and_metrics_match_the_predictions(runs, classes, kind):
    run = runs[0][kind]
    for name in ("config.yaml", "predictions.csv", "comparison.csv", "metrics.json", "history.json",
                 "accounting.csv", "domains.csv", "model/config.json", "model/preprocessing.json"):
        assert (run / name).is_file(), name
    assert not (run / "audit").exists()
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    models = ["hybrid", "logistic_regression" if kind == "multiclass" else "ridge_regression", "random_forest"]
    assert "gradient_boosting" not in preds.columns  # not available for these kinds: skipped with a note
    assert f"baseline gradient_boosting skipped: not available for a {kind} label" in runs[2]
    assert "Audit skipped" in runs[2]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["label"]["kind"] == kind and set(metrics["comparison"]) == set(models)
    test = preds[preds["split"] == "test"]
    assert metrics["n"] == len(test) and not test[models].isna().any().any()
    if kind == "multiclass":
        assert set(test["y_true"]) <= set(classes)
        for m in models:
            probs = test[[f"{m}:p_{c}" for c in classes]].to_numpy()
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
            assert (np.asarray(classes)[probs.argmax(axis=1)] == test[m]).all()
    for m in models:
        ref = _reference(kind, test, m, classes)
        row = metrics["comparison"][m]
        for name in KIND_METRICS[kind]:
            assert row[name] == pytest.approx(ref[name], rel=1e-6)
            assert row[f"{name}_ci_low"] <= row[name] + 1e-9 <= row[f"{name}_ci_high"] + 2e-9
        assert row["n"] == len(test)


@pytest.mark.parametrize("kind", list(LABELS))
def test_evaluate_recomputes_the_table_and_report_writes(runs, kind):
    run = runs[0][kind]
    before = pd.read_csv(run / "comparison.csv", index_col=0)
    summary = evaluate_predictions(run, n_boot=30)
    pd.testing.assert_frame_equal(before, pd.read_csv(run / "comparison.csv", index_col=0))
    assert summary["label"]["kind"] == kind
    shown, title = display_comparison(before)
    assert kind in title and list(shown["metric"]) == ["n", *KIND_METRICS[kind]]
    html = build_report(run).read_text()
    assert KIND_METRICS[kind][0] in html and "binary labels only" in html


@pytest.mark.parametrize("kind", list(LABELS))
def test_predict_reproduces_the_runs_test_predictions(runs, classes, kind, tmp_path):
    run = runs[0][kind]
    frame = predict_source(run / "model", "synthetic", tmp_path / "again", n_stays=300, seed=2).set_index("stay_id")
    assert "risk_group" not in frame.columns and "probability" not in frame.columns
    assert set(frame["status"]) == {"ok"}
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    test = preds[preds["split"] == "test"].set_index("stay_id")
    got = frame.loc[test.index]
    if kind == "multiclass":
        np.testing.assert_allclose(got[[f"p_{c}" for c in classes]].to_numpy(),
                                   test[[f"hybrid:p_{c}" for c in classes]].to_numpy(), atol=1e-6)
        assert (got["predicted_class"] == test["hybrid"]).all()
        assert (got["y_true"] == test["y_true"]).all()
    else:
        np.testing.assert_allclose(got["prediction"], test["hybrid"], atol=1e-5)
        np.testing.assert_allclose(got["y_true"].astype(float), test["y_true"], rtol=1e-6)
    # the input carries the label: predict's external-validation table holds the kind's metrics of all scored rows
    table, title = external_validation(frame.reset_index(), n_boot=20)
    assert "n = 300" in title
    if kind == "multiclass":
        reference = multiclass_metrics(pd.Index(classes).get_indexer(frame["y_true"]),
                                       frame[[f"p_{c}" for c in classes]].to_numpy())
    else:
        reference = regression_metrics(frame["y_true"].to_numpy(dtype=float), frame["prediction"].to_numpy())
    shown = table.set_index("metric")["model"]
    for metric in KIND_METRICS[kind]:
        assert shown[metric].startswith(f"{reference[metric]:.3f}"), metric


@pytest.mark.parametrize("label, extra, match", [
    ("diagnoses", {}, "'diagnoses' is multilabel.*healthfusion multitask"),
    ("phenotype", {"ensemble": {"seeds": 2}}, "'ensemble' section works with binary labels only.*'phenotype'"),
    ("los_days", {"reference_scores": ["saps_i"]}, "'reference_scores' section works with binary labels only"),
    ("phenotype", {"tuning": {"grid": {"hidden": [4, 8]}}}, "'tuning' section works with binary labels only"),
    ("los_days", {"training": {"imbalance": "class_weight"}}, "training.imbalance.*regression label"),
])
def test_settings_a_label_kind_cannot_use_are_clear_errors(runs, label, extra, match):
    root = runs[1]
    config = _config(root, label, root / f"bad-{label}", **extra)
    with pytest.raises(ValueError, match=match):
        run_training(config)
    assert not (root / f"bad-{label}" / "predictions.csv").exists()


def test_regression_baselines_fit_and_reject_unknown_names():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    x[::7, 1] = np.nan
    y = 2.0 * x[:, 0] + rng.normal(scale=0.1, size=60)
    pred = make_regression_baseline("ridge_regression").fit(x, y).predict(x)
    assert regression_metrics(y, pred)["r2"] > 0.9
    assert make_regression_baseline("random_forest").fit(x, y).predict(x).shape == (60,)
    with pytest.raises(ValueError, match="expected one of ridge_regression, random_forest"):
        make_regression_baseline("svm")


def test_explain_says_it_needs_a_binary_risk_model(runs):
    from healthfusion.workflows.explain import explain_run

    with pytest.raises(ValueError, match="binary risk models.*multiclass label 'phenotype'"):
        explain_run(runs[0]["multiclass"])
