"""Early-warning metrics and the NEWS2 baseline against hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from healthfusion.evaluation.alerts import (
    alert_metrics,
    alert_times,
    threshold_for_budget,
    threshold_for_sensitivity,
)
from healthfusion.evaluation.news2 import latest_values, news2

SCORES = pd.DataFrame({"stay_id": ["a"] * 4 + ["b"] * 4, "time": [6, 7, 8, 9] * 2,
                       "score": [0.2, 0.6, 0.7, 0.3, 0.6, 0.4, 0.55, 0.1]})
OUTCOME = pd.Series({"a": 1, "b": 0})


def test_alerts_respect_the_lockout():
    alerts = alert_times(SCORES, 0.5)  # lockout 4 h: a alerts at 7 (not 8), b at 6 (not 8)
    assert list(zip(alerts["stay_id"], alerts["time"], strict=True)) == [("a", 7), ("b", 6)]
    alerts = alert_times(SCORES, 0.5, lockout=1.0)
    assert list(zip(alerts["stay_id"], alerts["time"], strict=True)) == [("a", 7), ("a", 8), ("b", 6), ("b", 8)]


def test_alert_metrics_by_hand():
    m = alert_metrics(SCORES, OUTCOME, 0.5, end=48)
    # 2 alerts over 2 stays x 4 monitored hours = 1/3 patient-day; 1 of 2 alerts in the positive stay
    assert m["n_alerts"] == 2 and m["alerts_per_patient_day"] == pytest.approx(6.0)
    assert m["ppv"] == pytest.approx(1 / 2) and m["sensitivity"] == 1.0
    assert m["lead_time_median"] == 41.0  # 48 - 7
    none = alert_metrics(SCORES, OUTCOME, 0.9, end=48)
    assert none["n_alerts"] == 0 and np.isnan(none["ppv"]) and none["sensitivity"] == 0.0


def test_thresholds_for_budget_and_sensitivity():
    assert threshold_for_budget(SCORES, 3.0) == 0.7  # at 0.6 two alerts (6/day), at 0.7 one (3/day)
    assert threshold_for_budget(SCORES, 9.0, lockout=1.0) == 0.6  # at 0.55 four alerts (12/day), at 0.6 three
    assert threshold_for_sensitivity(SCORES, OUTCOME, 1.0) == 0.7


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no outcome"):
        alert_metrics(SCORES, pd.Series({"a": 1}), 0.5, end=48)
    with pytest.raises(ValueError, match="0/1"):
        alert_metrics(SCORES, pd.Series({"a": 1, "b": 2}), 0.5, end=48)


@pytest.mark.parametrize("rr,points", [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3)])
def test_news2_respiratory_bands(rr, points):
    assert news2(pd.DataFrame({"RespRate": [rr]}))["resp_rate"].iloc[0] == points


def test_news2_sum_fallbacks_and_missing():
    frame = pd.DataFrame({"RespRate": [26, np.nan], "SaO2": [93, 97], "SysABP": [np.nan, 120], "NISysABP": [95, 80],
                          "HR": [120, 45], "GCS": [15, 9], "Temp": [38.5, 35.0], "FiO2": [0.21, 0.5]})
    points = news2(frame)
    # row 2: oxygen 2 (FiO2 0.5), HR 45 -> 1, GCS 9 -> 3, Temp 35.0 -> 3; SysABP 120 wins over NISysABP 80
    assert points["news2"].tolist() == [3 + 2 + 2 + 2 + 0 + 1, 2 + 1 + 3 + 3]
    assert points["n_measured"].tolist() == [6, 5]
    with pytest.raises(ValueError, match="No NEWS2 vital"):
        news2(pd.DataFrame({"Lactate": [2.0]}))


def test_latest_values_carry_the_last_observation_forward_only():
    events = pd.DataFrame({"stay_id": ["a", "a", "b"], "time": [1.0, 5.0, 2.0], "variable": ["HR"] * 3,
                           "value": [80.0, 120.0, 60.0]})
    times = pd.DataFrame({"stay_id": ["a", "a", "b", "b"], "time": [6.0, 3.0, 1.0, 7.0]})
    out = latest_values(events, times, ["HR"])
    assert out["HR"].iloc[0] == 120.0 and out["HR"].iloc[1] == 80.0 and out["HR"].iloc[3] == 60.0
    assert np.isnan(out["HR"].iloc[2])  # nothing observed yet at hour 1
