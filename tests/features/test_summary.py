"""healthfusion.features.summary against a hand-computed example."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from healthfusion.features.summary import SUMMARY_STATS, summary_features


@pytest.fixture
def events():
    rows = [
        # stay 10: HR at t=3,1,2 (out of order) -> last is 95 (t=3); MAP once
        (10, 3.0, "HR", 95.0),
        (10, 1.0, "HR", 80.0),
        (10, 2.0, "HR", 85.0),
        (10, 0.5, "MAP", 70.0),
        (10, 4.0, "MAP", np.nan),  # missing value: ignored, also for "last"
        # stay 20: only MAP, two values at the same time -> last is the later row (60)
        (20, 5.0, "MAP", 65.0),
        (20, 5.0, "MAP", 60.0),
        (20, 1.0, "MAP", 75.0),
        # ignored: a stay not asked for, a variable not asked for
        (99, 1.0, "HR", 200.0),
        (10, 1.0, "Temp", 37.0),
    ]
    return pd.DataFrame(rows, columns=["stay_id", "time", "variable", "value"])


def test_hand_computed_example(events):
    out = summary_features(events, stay_ids=[20, 30, 10], variables=["HR", "MAP"])
    assert list(out.index) == [20, 30, 10] and out.index.name == "stay_id"
    assert list(out.columns) == [f"{v}__{s}" for v in ("HR", "MAP") for s in SUMMARY_STATS]

    hr10 = out.loc[10]
    assert hr10["HR__last"] == 95.0
    assert hr10["HR__mean"] == pytest.approx((80 + 85 + 95) / 3)
    assert (hr10["HR__min"], hr10["HR__max"]) == (80.0, 95.0)
    assert hr10["HR__std"] == pytest.approx(np.std([80, 85, 95], ddof=1))
    assert hr10["HR__count"] == 3
    assert (hr10["MAP__last"], hr10["MAP__count"]) == (70.0, 1)
    assert math.isnan(hr10["MAP__std"])  # one observation: sample std undefined

    map20 = out.loc[20]
    assert map20["MAP__last"] == 60.0
    assert map20["MAP__mean"] == pytest.approx(200 / 3)
    assert (map20["MAP__min"], map20["MAP__max"], map20["MAP__count"]) == (60.0, 75.0, 3)
    assert map20["HR__count"] == 0
    assert all(math.isnan(map20[f"HR__{s}"]) for s in SUMMARY_STATS if s != "count")

    never = out.loc[30]
    assert never.filter(like="__count").tolist() == [0, 0]
    assert never.drop(["HR__count", "MAP__count"]).isna().all()

    assert out["HR__count"].dtype == np.int64 and out["HR__mean"].dtype == np.float64


def test_stats_subset_and_order(events):
    out = summary_features(events, [10], ["MAP", "HR"], stats=("max", "last"))
    assert list(out.columns) == ["MAP__max", "MAP__last", "HR__max", "HR__last"]
    assert out.loc[10].tolist() == [70.0, 70.0, 95.0, 95.0]


def test_datetime_times_and_string_ids():
    t0 = pd.Timestamp("2024-01-01")
    events = pd.DataFrame({
        "stay_id": ["a", "a", "b"],
        "time": [t0 + pd.Timedelta(hours=2), t0, t0],
        "variable": ["lactate"] * 3,
        "value": [4.0, 2.0, 1.0],
    })
    out = summary_features(events, ["b", "a"], ["lactate"], stats=("last", "count"))
    assert out.to_dict("list") == {"lactate__last": [1.0, 4.0], "lactate__count": [1, 2]}


def test_no_matching_events_gives_all_missing(events, caplog):
    out = summary_features(events, ["10"], ["HR"], stats=("mean", "count"))  # str vs int ids
    assert math.isnan(out.loc["10", "HR__mean"]) and out.loc["10", "HR__count"] == 0
    assert "None of the" in caplog.text
    empty = summary_features(events.iloc[:0], [1, 2], ["HR"])
    assert empty.shape == (2, len(SUMMARY_STATS)) and (empty["HR__count"] == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stats": ("mean", "median")}, "Unknown statistic 'median'"),
        ({"stats": ("maximum",)}, "Did you mean 'max'"),
        ({"stats": "mean"}, "sequence of names"),
        ({"stats": ()}, "at least one statistic"),
        ({"stay_ids": [10, 10]}, r"distinct stay_ids, got duplicates \[10\]"),
        ({"variables": ["HR", "HR"]}, "distinct variables"),
    ],
)
def test_bad_arguments(events, kwargs, match):
    args = {"stay_ids": [10, 20], "variables": ["HR"], **kwargs}
    with pytest.raises(ValueError, match=match):
        summary_features(events, **args)


def test_bad_events(events):
    with pytest.raises(ValueError, match=r"missing \['time'\]"):
        summary_features(events.drop(columns="time"), [10], ["HR"])
    with pytest.raises(ValueError, match="numeric 'value'"):
        summary_features(events.assign(value="x"), [10], ["HR"])
    with pytest.raises(ValueError, match="missing time"):
        summary_features(events.assign(time=np.nan), [10], ["HR"])
