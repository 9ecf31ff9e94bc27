"""healthfusion alerts: hourly scores of the model and NEWS2 on the same stays, compared at an alert budget."""

import numpy as np

from healthfusion.models.scoring import load_model
from healthfusion.workflows.alerts import compare_scores, hourly_scores


def test_hourly_scores_match_predict_at_each_hour_and_compare(model_dir, cohort):
    model = load_model(model_dir)
    small = cohort.subset([str(s) for s in cohort.stay_ids[:30]])
    scores = hourly_scores(model, small, [6.0, 20.0, 36.0])
    assert len(scores) == 90 and set(scores["time"]) == {6.0, 20.0, 36.0}
    at_end = scores[scores["time"] == 36.0].set_index("stay_id")["model"]
    expected = model.predict(small).set_index("stay_id")["probability"]  # the reader's prediction time is 36 h
    np.testing.assert_allclose(at_end.loc[expected.index], expected, atol=1e-6)
    assert (scores["news2"] >= 0).all() and scores["news2"].max() > 0
    outcome = small.label(model.label.name).astype(int)
    table, curves = compare_scores(scores, outcome, budget=2.0, end=36.0, step=1.0)
    budget_rows = table[table["operating_point"].str.startswith("<=")]
    assert list(budget_rows["score"]) == ["model", "news2"]
    assert (budget_rows["alerts_per_patient_day"] <= 2.0 + 1e-9).all()
    assert set(curves["score"]) == {"model", "news2"}
