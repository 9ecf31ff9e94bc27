"""The optional statistics of summary_features (first, sum, slope) and of engineered_features."""

import math

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.cohort import Cohort
from healthfusion.features.compose import CohortFeaturizer, engineered_features
from healthfusion.features.summary import ALL_STATS, SUMMARY_STATS, summary_features
from healthfusion.features.timeseries import TimeSeriesTransformer


def test_first_sum_slope_match_a_reference():
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"stay_id": rng.integers(0, 6, 80), "time": rng.uniform(0, 48, 80).round(1),
                           "variable": rng.choice(["HR", "Urine"], 80), "value": rng.normal(size=80)})
    out = summary_features(events, range(7), ["HR", "Urine"], stats=("first", "sum", "slope"))
    for (stay, var), g in events.groupby(["stay_id", "variable"]):
        g = g.sort_values("time", kind="stable")
        assert out.loc[stay, f"{var}__first"] == g["value"].iloc[0]
        assert out.loc[stay, f"{var}__sum"] == pytest.approx(g["value"].sum())
        assert out.loc[stay, f"{var}__slope"] == pytest.approx(np.polyfit(g["time"], g["value"], 1)[0])
    assert out.loc[6, "HR__sum"] == 0.0 and math.isnan(out.loc[6, "HR__first"]) and math.isnan(out.loc[6, "HR__slope"])


def test_slope_needs_two_distinct_times_and_converts_datetimes():
    events = pd.DataFrame({"stay_id": [1, 1, 2, 2], "time": [3.0, 3.0, 0.0, 2.0], "variable": "HR",
                           "value": [60.0, 70.0, 60.0, 70.0]})
    out = summary_features(events, [1, 2], ["HR"], stats=("slope",))
    assert math.isnan(out.loc[1, "HR__slope"]) and out.loc[2, "HR__slope"] == pytest.approx(5.0)
    stamped = events.assign(time=pd.Timestamp("2020-01-01") + pd.to_timedelta(events["time"], unit="h"))
    again = summary_features(stamped, [1, 2], ["HR"], stats=("slope",))
    assert again.loc[2, "HR__slope"] == pytest.approx(5.0)


def test_default_statistics_are_unchanged():
    events = pd.DataFrame({"stay_id": [1, 1], "time": [0.0, 1.0], "variable": "HR", "value": [1.0, 2.0]})
    assert list(summary_features(events, [1], ["HR"]).columns) == [f"HR__{s}" for s in SUMMARY_STATS]
    assert set(SUMMARY_STATS) < set(ALL_STATS)


def test_engineered_features_statistics():
    stays = pd.DataFrame({"stay_id": ["a", "b"], "patient_id": ["p", "q"], "prediction_time": [48.0, 48.0]})
    events = pd.DataFrame({"stay_id": ["a"] * 4 + ["b"] * 2, "time": [1.0, 20.0, 30.0, 46.0, 2.0, 10.0],
                           "variable": "HR", "value": [50.0, 60.0, 90.0, 110.0, 70.0, 80.0]})
    cohort = Cohort(stays, events=events)
    feat = CohortFeaturizer(("ts",), transformers={"ts": TimeSeriesTransformer(hours=48, step=2, min_count=1)})
    feat.fit(cohort, ["a", "b"])
    base = engineered_features(cohort, feat, ["a", "b"])
    assert list(base.columns) == [f"HR__{s}" for s in SUMMARY_STATS]
    x = engineered_features(cohort, feat, ["a", "b"], stats=("first", "last", "sum", "slope"))
    assert list(x.columns) == ["HR__first", "HR__last", "HR__sum", "HR__slope"]
    assert x.loc["a"].tolist()[:3] == [50.0, 110.0, 310.0]
    assert x.loc["b", "HR__slope"] == pytest.approx(10.0 / 8.0)
    with pytest.raises(ValueError, match="Unknown statistic"):
        engineered_features(cohort, feat, ["a"], stats=("mode",))
