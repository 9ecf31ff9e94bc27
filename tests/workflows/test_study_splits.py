"""A study's own splits: ``split: predefined`` (the cohort's split column), runs without a test set, and a list of
external test sets each scored on its own."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from healthfusion.data import synthetic
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import CohortError
from healthfusion.data.splits import predefined_split
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.explain import explain_run
from healthfusion.workflows.predict import predict_source
from healthfusion.workflows.report import build_report
from healthfusion.workflows.train import run_training


def _stays(values):
    return pd.DataFrame({"stay_id": [f"s{i}" for i in range(len(values))], "patient_id": "p", "split": values})


def test_predefined_split_maps_medmnist_and_meds_names():
    split = predefined_split(_stays(["train", "val", "test", "tuning", "held_out", "TRAIN"]))
    assert split.tolist() == ["train", "val", "test", "val", "test", "train"]
    assert split.index.tolist() == [f"s{i}" for i in range(6)]


def test_predefined_split_names_a_missing_column_and_unknown_values():
    with pytest.raises(CohortError, match=r"'fold'.*lacks.*data.split.column"):
        predefined_split(_stays(["train", "val"]), column="fold")
    with pytest.raises(CohortError, match=r"\{'extra': 2\}"):
        predefined_split(_stays(["train", "val", "extra", "extra"]))
    with pytest.raises(CohortError, match="no value in column 'split'.*stay 's1'"):
        predefined_split(_stays(["train", None, "val"]))
    with pytest.raises(CohortError, match="training and validation"):
        predefined_split(_stays(["train", "test"]))


def _write_config(path, **cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_split_predefined_in_a_run_config(tmp_path):
    base = {"data": {"cohort": "c", "label": "mortality", "split": "predefined"}}
    config = load_run_config(_write_config(tmp_path / "a.yaml", **base))
    assert config.data.split.method == "predefined" and config.data.split.column == "split"
    base["data"]["split"] = {"method": "predefined", "train": 0.5}
    with pytest.raises(ConfigError, match=r"\['train'\] do not apply"):
        load_run_config(_write_config(tmp_path / "b.yaml", **base))
    base["data"]["split"] = "by_site"
    with pytest.raises(ConfigError, match="split: predefined"):
        load_run_config(_write_config(tmp_path / "c.yaml", **base))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """A synthetic cohort cut by patients into a development part with its own train/val split column (no test
    stays) and two external test sets."""
    root = tmp_path_factory.mktemp("studies")
    synthetic.write(root / "all", n_stays=300, seed=2)
    full = Cohort.load(root / "all")
    patients = full.stays["patient_id"].drop_duplicates().to_numpy()
    parts = np.array_split(patients, [int(len(patients) * 0.6), int(len(patients) * 0.8)])
    for name, group in zip(("dev", "ext-a", "ext-b"), parts, strict=True):
        ids = full.stays.loc[full.stays["patient_id"].isin(group), "stay_id"].tolist()
        part = full.subset(ids)
        if name == "dev":
            part.stays["split"] = np.where(np.arange(len(ids)) % 4 == 0, "tuning", "train")  # MEDS' name for val
        part.save(root / name)
    return root


def _train(root, out, **data):
    cfg = {"name": "study", "out": str(root / out),
           "data": {"cohort": "dev", "label": "mortality", "split": "predefined", **data},
           "features": {"modalities": ["ts", "static"]}, "model": {"hidden": 8},
           "training": {"max_epochs": 2, "batch_size": 32}, "baselines": ["logistic_regression"],
           "evaluation": {"n_boot": 20}}
    return run_training(load_run_config(_write_config(root / f"{out}.yaml", **cfg)))


def test_a_run_without_test_set_trains_validates_and_says_so(cohorts):
    run = _train(cohorts, "no-test")
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    dev = Cohort.load(cohorts / "dev").stays
    assert set(preds["split"]) == {"val"}
    assert sorted(preds["stay_id"]) == sorted(dev.loc[dev["split"] == "tuning", "stay_id"])  # the cohort's own
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_set"] is False and metrics["split"] == "val"
    assert metrics["n"] == len(preds)
    assert set(metrics["challenge2012"]) == {"hybrid", "logistic_regression"}
    assert metrics["challenge2012"]["hybrid"]["n"] == metrics["n"]
    e1 = metrics["challenge2012"]["hybrid"]
    assert e1["n_boot"] == 20 and e1["event1_ci_low"] <= e1["event1"] <= e1["event1_ci_high"]
    assert e1["event2_h_ci_low"] <= e1["event2_h_ci_high"]
    acc = pd.read_csv(run / "accounting.csv")
    assert list(acc["cohort"].unique()) == ["main (train, val)"]
    html = build_report(run).read_text()
    assert "no test set" in html and "PhysioNet Challenge 2012 scores" in html
    assert "95% percentile bootstrap over the test stays, resampled within deaths and survivors" in html
    with pytest.raises(ValueError, match="no test stays"):
        explain_run(run)
    frame = predict_source(run / "model", "synthetic", cohorts / "new", n_stays=40, seed=5)  # external data later
    assert frame["probability"].notna().any()


def test_a_list_of_test_sets_is_scored_per_set(cohorts):
    run = _train(cohorts, "two-tests", test=[{"cohort": "ext-a"}, {"cohort": "ext-b"}])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_set"] is True
    assert set(metrics["test_sets"]) == {"ext-a", "ext-b"}
    sizes = {name: len(Cohort.load(cohorts / name)) for name in ("ext-a", "ext-b")}
    assert {k: v["hybrid"]["n"] for k, v in metrics["test_sets"].items()} == sizes
    assert metrics["n"] == sum(sizes.values())  # the pooled table covers both
    table = pd.read_csv(run / "comparison_by_test_set.csv")
    assert len(table) == 4 and set(table["test_set"]) == {"ext-a", "ext-b"}
    assert "Each external test set on its own" in build_report(run).read_text()


def test_predefined_test_stays_beside_external_test_sets_is_an_error(cohorts, tmp_path):
    dev = Cohort.load(cohorts / "dev")
    dev.stays["split"] = np.where(np.arange(len(dev)) % 5 == 0, "held_out", dev.stays["split"])
    dev.save(tmp_path / "dev")
    cfg = {"out": str(tmp_path / "run"), "data": {"cohort": "dev", "label": "mortality", "split": "predefined",
                                                   "test": {"cohort": str(cohorts / "ext-a")}}}
    with pytest.raises(CohortError, match="drop data.test"):
        run_training(load_run_config(_write_config(tmp_path / "r.yaml", **cfg)))
    assert not (tmp_path / "run").exists()  # the error comes before the run folder is claimed
