"""Helpers shared by the workflow tests."""

import pandas as pd

from healthfusion.workflows.predict import predict_source


def rescore_test_stays(run, tmp_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the synthetic training cohort again through ``predict`` with the run's saved model (the synthetic
    source regenerates it from its seed: n_stays=300, seed=2, as the runs of these tests): ``(predict's frame,
    the run's test rows of predictions.csv)``, both indexed by stay id."""
    frame = predict_source(run / "model", "synthetic", tmp_path / "again", n_stays=300, seed=2).set_index("stay_id")
    preds = pd.read_csv(run / "predictions.csv", dtype={"stay_id": str})
    return frame, preds[preds["split"] == "test"].set_index("stay_id")
