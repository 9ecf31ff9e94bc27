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
    table, curves = compare_scores(scores, outcome, budget=2.0, end=36.0, step=1.0, n_boot=50)
    budget_rows = table[table["operating_point"].str.startswith("<=")]
    assert list(budget_rows["score"]) == ["model", "news2"]
    assert (budget_rows["alerts_per_patient_day"] <= 2.0 + 1e-9).all()
    assert set(curves["score"]) == {"model", "news2"}
    assert (budget_rows["ppv_ci_low"].dropna() <= budget_rows["ppv"].dropna()).all() and (table["n_boot"] == 50).all()


def test_alert_metric_intervals_resample_stays():
    import pandas as pd
    import pytest

    from healthfusion.evaluation.alerts import CI_METRICS, alert_metrics, alert_metrics_ci

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(80)]
    outcome = pd.Series((np.arange(80) % 4 == 0).astype(int), index=ids)
    hours = np.arange(6.0, 25.0)
    score = [0.1 * outcome[s] + rng.uniform(0, 1) for s in ids for _ in hours]
    scores = pd.DataFrame({"stay_id": np.repeat(ids, len(hours)), "time": np.tile(hours, len(ids)), "score": score})
    point = alert_metrics(scores, outcome, 0.97, end=24.0)
    cis = alert_metrics_ci(scores, outcome, 0.97, end=24.0, n_boot=300, seed=1)
    assert set(cis) == set(CI_METRICS)
    for metric, ci in cis.items():
        assert ci.value == pytest.approx(point[metric]) and ci.n == 80 and ci.n_boot == 300
        assert ci.ci_low <= ci.value <= ci.ci_high and ci.ci_low < ci.ci_high
    assert 0 < cis["ppv"].ci_low and cis["sensitivity"].ci_high <= 1
    wide = alert_metrics_ci(scores[scores["stay_id"].isin(ids[:20])], outcome[ids[:20]], 0.97, end=24.0, n_boot=300)
    assert wide["ppv"].ci_high - wide["ppv"].ci_low > cis["ppv"].ci_high - cis["ppv"].ci_low  # fewer stays, wider


def test_report_has_an_early_warning_section_when_the_run_has_alert_results(model_dir, cohort, tmp_path):
    import shutil

    from healthfusion.workflows.report import build_report

    run = tmp_path / "run"
    shutil.copytree(model_dir.parent, run)
    before = build_report(run, tmp_path / "before.html").read_text()
    assert "Early warning" not in before
    model = load_model(run / "model")
    small = cohort.subset([str(s) for s in cohort.stay_ids[:30]])
    scores = hourly_scores(model, small, [6.0, 20.0, 36.0])
    table, _ = compare_scores(scores, small.label(model.label.name).astype(int), budget=2.0, end=36.0, n_boot=40)
    (run / "alerts").mkdir()
    table.to_csv(run / "alerts" / "alerts.csv", index=False)
    html = build_report(run, tmp_path / "after.html").read_text()
    assert "Early warning" in html and "40 bootstrap resamples of stays" in html
    low, high = table.loc[0, "ppv_ci_low"], table.loc[0, "ppv_ci_high"]
    assert f"{table.loc[0, 'ppv']:.3g} ({low:.3g} to {high:.3g})" in html
