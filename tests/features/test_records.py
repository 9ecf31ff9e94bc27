"""Patients as arrays (a scoring request) featurize exactly like the same patients as a cohort."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.records import PatientRecords
from healthfusion.data.sources import get_source
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.features.tabular import StaticTransformer
from healthfusion.features.timeseries import TimeSeriesTransformer


def _records(cohort, ids, prediction_time) -> PatientRecords:
    """The cohort's stays ``ids`` as records, with planted events the features must not use: one after the
    prediction time, one implausible value, one unknown variable, one before the window; a patient without events
    and categorical values missing."""
    events = cohort.read_table("events")
    events = events[events["stay_id"].isin(ids[1:])]  # ids[0] has no events
    planted = pd.DataFrame({"stay_id": [ids[1]] * 4, "time": [prediction_time + 1.0, 12.0, 10.0, 0.0],
                            "variable": ["HR", "HR", "Mystery", "HR"], "value": [300.0, 0.0, 1.0, 80.0]})
    events = pd.concat([events, planted], ignore_index=True)
    static = cohort.static.set_index("stay_id").reindex(ids)
    static.loc[ids[2], "sex"] = None
    static.loc[ids[3], "age"] = np.nan
    types = cohort.meta.feature_types
    return PatientRecords(
        stay_ids=tuple(ids), prediction_time=np.full(len(ids), prediction_time),
        event_stay=pd.Index(ids).get_indexer(events["stay_id"]), event_time=events["time"].to_numpy(float),
        event_variable=events["variable"].to_numpy(object), event_value=events["value"].to_numpy(float),
        static={c: [None if pd.isna(v) else (float(v) if types[c] == "numeric" else str(v)) for v in static[c]]
                for c in types},
        feature_types=dict(types))


@pytest.mark.parametrize("missing", ["level", "mode"])
def test_records_featurize_like_the_same_patients_as_a_cohort(tmp_path, missing):
    cohort = get_source("synthetic")(tmp_path, n_stays=40, seed=3)
    ids = [str(s) for s in cohort.stay_ids]
    feat = CohortFeaturizer(("ts", "static"), summary=True, transformers={
        "ts": TimeSeriesTransformer(hours=24, step=2), "static": StaticTransformer(categorical_missing=missing)})
    feat.fit(cohort, ids[:30])
    order = ids[30:][::-1]  # another order than the cohort's
    records = _records(cohort, order, prediction_time=30.0)
    fast = feat.transform_records(records)
    slow = feat.transform(records.to_cohort(), order, with_target=False)
    assert feat.reads_records and set(fast) == set(slow)
    for key in slow:
        np.testing.assert_array_equal(fast[key], slow[key], err_msg=key)
    assert fast.meta["feature_drops"] == slow.meta["feature_drops"]
    drops = fast.meta["feature_drops"]["events"]
    assert drops["implausible value"] >= 1 and drops["unknown variable"] >= 1 and drops["before window"] >= 1
    assert not fast["ts_present"][0] and fast["ts_present"][1:].all()
    # variables as a categorical (how the service sends them), an unknown one among its categories: the same
    categorical = feat.transform_records(dataclasses.replace(records,
                                                             event_variable=pd.Categorical(records.event_variable)))
    for key in slow:
        np.testing.assert_array_equal(categorical[key], slow[key], err_msg=key)
    assert categorical.meta["feature_drops"] == slow.meta["feature_drops"]
    future = records.event_time > 30.0  # the planted future event reaches no array: drop it and nothing changes
    kept = PatientRecords(records.stay_ids, records.prediction_time, records.event_stay[~future],
                          records.event_time[~future], records.event_variable[~future], records.event_value[~future],
                          records.static, records.feature_types)
    np.testing.assert_array_equal(feat.transform_records(kept)["ts_values"], fast["ts_values"])


def test_records_refuse_bad_arrays_and_other_modalities(tmp_path):
    with pytest.raises(ValueError, match="event_stay must index"):
        PatientRecords(("a",), np.array([1.0]), np.array([1]), np.array([0.5]), np.array(["HR"], dtype=object),
                       np.array([80.0]))
    with pytest.raises(ValueError, match="'numeric' or 'categorical'"):
        PatientRecords(("a",), np.array([1.0]), np.array([], int), np.array([]), np.array([], dtype=object),
                       np.array([]), static={"age": [70.0]})
    cohort = get_source("synthetic")(tmp_path, n_stays=20, seed=1)
    ids = [str(s) for s in cohort.stay_ids]
    feat = CohortFeaturizer(("ts", "static", "codes")).fit(cohort, ids)
    assert not feat.reads_records
    with pytest.raises(ValueError, match="records.to_cohort"):
        feat.transform_records(_records(cohort, ids[:5], 48.0))
