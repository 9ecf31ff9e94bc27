"""Real data end to end: train on PhysioNet 2012 set A, score a set-B directory without outcomes via predict."""

import tarfile

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from healthfusion.workflows.config import load_run_config
from healthfusion.workflows.predict import predict_source
from healthfusion.workflows.report import build_report
from healthfusion.workflows.train import run_training

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_train_on_set_a_then_predict_a_set_b_directory(shared_dataset, tmp_path):
    folder = shared_dataset("physionet2012")
    cfg = {
        "out": str(tmp_path / "run"),
        "data": {"source": "physionet2012", "path": str(folder / "set-a.tar.gz"), "label": "in_hospital_death",
                 "split": {"train": 0.8, "val": 0.2, "test": 0.0}},
        "features": {"modalities": ["ts", "static"], "summary": True},  # the wide input must be re-applied as fitted
        "model": {"hidden": 16},
        "training": {"max_epochs": 3, "patience": None, "batch_size": 128},
        "baselines": [],
        "evaluation": {"n_boot": 20},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    cfg["data"]["test"] = {"source": "physionet2012", "path": str(folder / "set-b.tar.gz")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = run_training(load_run_config(tmp_path / "run.yaml"))

    with tarfile.open(folder / "set-b.tar.gz") as tar:  # a plain set directory, no outcomes file beside it
        tar.extractall(tmp_path / "raw", filter="data")
    preds = predict_source(run / "model", "physionet2012", tmp_path / "raw" / "set-b")
    assert len(preds) == 4000 and "y_true" not in preds.columns
    assert set(preds["status"]) <= {"scored", "no usable data"}

    outcomes = pd.read_csv(folder / "Outcomes-b.txt", dtype={"RecordID": str}).set_index("RecordID")
    scored = preds[preds["status"] == "scored"]
    y = outcomes.loc[scored["stay_id"], "In-hospital_death"].to_numpy()
    auc = roc_auc_score(y, scored["probability"])
    assert auc > 0.75, f"a 3-epoch model on set A should rank set-B deaths well above chance; got {auc:.3f}"

    run_preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    test = run_preds[run_preds["split"] == "test"].set_index("stay_id")
    common = scored.set_index("stay_id").index.intersection(test.index)
    np.testing.assert_allclose(scored.set_index("stay_id").loc[common, "probability"],
                               test.loc[common, "hybrid"], rtol=1e-5, atol=1e-6)


    # the report leaves no RecordID, no path of this machine and no subgroup cell under 10
    html = build_report(run).read_text()
    explained = pd.read_csv(run / "explanations" / "top_features.csv", dtype={"stay_id": str})["stay_id"].unique()
    assert len(explained) and not any(f">{s}<" in html for s in explained)
    assert str(tmp_path) not in html and str(folder) not in html and str(tmp_path) not in (run / "config.yaml").read_text()
    groups = pd.read_csv(run / "audit" / "subgroups.csv", dtype=str, keep_default_na=False)
    counts = pd.to_numeric(groups["n_positive"], errors="coerce")
    assert ((counts >= 10) | (groups["n_positive"] == "<10")).all()
