"""A model trained on a cohort scores the same cohort written as MEDS and read back: the same risks (to float32
precision of the MEDS values), so a format round trip changes nothing a model sees."""

import numpy as np
import pandas as pd
import pytest
import yaml

from healthfusion.data import synthetic
from healthfusion.data.cohort import Cohort
from healthfusion.data.sources.meds_export import export_meds
from healthfusion.workflows.config import load_run_config
from healthfusion.workflows.predict import predict_source
from healthfusion.workflows.train import run_training


@pytest.mark.slow
def test_predict_from_meds_matches_the_run(tmp_path):
    synthetic.write(tmp_path / "cohort", n_stays=200, seed=4)
    cfg = {"name": "m", "out": str(tmp_path / "run"), "data": {"cohort": "cohort", "label": "mortality"},
           "features": {"modalities": ["ts", "static", "codes", "text"]}, "model": {"hidden": 8},
           "training": {"max_epochs": 1, "batch_size": 32}, "baselines": [],
           "evaluation": {"n_boot": 10, "audit": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = run_training(load_run_config(tmp_path / "run.yaml"))
    summary = export_meds(Cohort.load(tmp_path / "cohort"), tmp_path / "meds")
    assert summary["stays"] == 200
    scored = predict_source(run / "model", "meds", tmp_path / "meds", task="mortality").set_index("stay_id")
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    test = preds[preds["split"] == "test"].set_index("stay_id")
    assert len(test) > 10 and test.index.isin(scored.index).all()
    np.testing.assert_allclose(scored.loc[test.index, "probability"], test["hybrid"], atol=1e-4)
