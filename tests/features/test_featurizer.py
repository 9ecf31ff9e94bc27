import json

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.cohort import Cohort
from healthfusion.data.schema import LabelSpec
from healthfusion.features.codes import CodeTransformer
from healthfusion.features.compose import CohortFeaturizer, encode_target
from healthfusion.features.text import clean_text, hash_ngrams
from healthfusion.features.timeseries import TimeSeriesTransformer

ALL = ("ts", "static", "codes", "text", "image")


def _featurizer(label="death", summary=False):
    return CohortFeaturizer(modalities=ALL, label=label, transformers={"codes": CodeTransformer(min_count=1)},
                            summary=summary)


def test_featurizer_shapes_and_state_round_trip(tiny_cohort):
    ids = list(tiny_cohort.stay_ids)
    feat = _featurizer().fit(tiny_cohort, ids[:8])
    ds = feat.transform(tiny_cohort, ids)
    assert ds["ts_values"].shape == (12, 48, 1) and ds["static"].shape[0] == 12
    assert ds["image"].shape == (12, 1, 28, 28)
    assert not ds["image_present"][0] and ds["image_present"][1:].all()
    assert ds["text_present"].sum() == 6
    restored = CohortFeaturizer.from_state(json.loads(json.dumps(feat.get_state())))
    again = restored.transform(tiny_cohort, ids)
    for key in ds:
        np.testing.assert_array_equal(ds[key], again[key])


def test_state_with_sorted_keys_transforms_identically(tiny_cohort):
    """Saved models write the state with sorted keys; no transformer may depend on its dicts' order."""
    ids = list(tiny_cohort.stay_ids)
    feat = _featurizer(summary=True).fit(tiny_cohort, ids[:8])
    ds = feat.transform(tiny_cohort, ids)
    again = CohortFeaturizer.from_state(json.loads(json.dumps(feat.get_state(), sort_keys=True))).transform(
        tiny_cohort, ids)
    for key in ds:
        np.testing.assert_array_equal(ds[key], again[key], err_msg=key)


def test_gridding_locf_mask_and_delta():
    stays = pd.DataFrame({"stay_id": ["a"], "patient_id": ["p"], "prediction_time": [4.0]})
    events = pd.DataFrame({"stay_id": "a", "time": [0.5, 0.7, 2.2, 9.0], "variable": "HR",
                           "value": [60.0, 80.0, 100.0, 500.0]})
    cohort = Cohort(stays, events=events)
    tr = TimeSeriesTransformer(hours=4, step=1, min_count=1).fit(cohort, ["a"])
    out = tr.transform(cohort, ["a"])
    mean, std = tr.mean_[0], tr.std_[0]
    z = (np.array([70.0, 70.0, 100.0, 100.0]) - mean) / std
    np.testing.assert_allclose(out["values"][0, :, 0], z, rtol=1e-5)
    np.testing.assert_array_equal(out["mask"][0, :, 0], [1, 0, 1, 0])
    np.testing.assert_allclose(out["delta"][0, :, 0], np.array([0, 1, 0, 1]) / 4)
    assert mean == pytest.approx(np.mean([60, 80, 100])), "the event after prediction time must not be fitted"


def test_gridding_in_chunks_of_stays_gives_the_same_arrays(tiny_cohort, monkeypatch):
    from healthfusion.features import timeseries

    ids = list(tiny_cohort.stay_ids)[::-1]  # an order unlike the events table's
    tr = TimeSeriesTransformer(min_count=1).fit(tiny_cohort, ids[:8])
    whole = tr.transform(tiny_cohort, ids)
    monkeypatch.setattr(timeseries, "GRID_CHUNK_STAYS", 5)  # 12 stays: chunks of 5, 5 and 2
    chunked = tr.transform(tiny_cohort, ids)
    assert whole["mask"].sum() > 0
    for key in whole:
        np.testing.assert_array_equal(whole[key], chunked[key])


def test_planted_future_events_never_reach_features(tiny_cohort):
    ids = list(tiny_cohort.stay_ids)
    feat = _featurizer().fit(tiny_cohort, ids)
    before = feat.transform(tiny_cohort, ids)
    future = pd.DataFrame({"stay_id": ids, "time": 30.0, "variable": "HR", "value": 250.0})
    future_codes = pd.DataFrame({"stay_id": ids, "time": 30.0, "system": "icd10", "code": "I10"})
    future_notes = pd.DataFrame({"stay_id": ids, "time": 30.0, "text": "patient died"})
    planted = Cohort(
        tiny_cohort.stays, static=tiny_cohort.static,
        events=pd.concat([tiny_cohort.events, future]), codes=pd.concat([tiny_cohort.codes, future_codes]),
        notes=pd.concat([tiny_cohort.notes, future_notes]), images=tiny_cohort.images,
        image_arrays=tiny_cohort.image_array(tiny_cohort.images.sort_values("offset")),
        labels=tiny_cohort.labels, meta=tiny_cohort.meta,
    )
    after = feat.transform(planted, ids)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


def test_unseen_category_and_missing_numeric(tiny_cohort):
    ids = list(tiny_cohort.stay_ids)
    feat = CohortFeaturizer(modalities=("static",)).fit(tiny_cohort, ids)
    names = feat.transformers_["static"].feature_names_
    ds = feat.transform(tiny_cohort, ids)
    assert ds["static"][0, names.index("age__missing")] == 1.0


def test_encode_target_rejects_unknown_values():
    spec = LabelSpec("ph", "multiclass", ("a", "b"))
    np.testing.assert_array_equal(encode_target(pd.Series(["b", None, "a"]), spec), [1, -1, 0])
    with pytest.raises(ValueError, match="not one of the declared classes"):
        encode_target(pd.Series(["c"]), spec)
    with pytest.raises(ValueError, match="not valid for a binary label"):
        encode_target(pd.Series([2.0]), LabelSpec("d", "binary"))
    multi = encode_target(pd.Series([["a"], None, ["a", "b"]]), LabelSpec("m", "multilabel", ("a", "b")))
    assert multi[0].tolist() == [1, 0] and np.isnan(multi[1]).all() and multi[2].tolist() == [1, 1]


def test_text_hashing_is_stable():
    assert clean_text("BP 120/80, Confused!") == "bp 0 0 confused"
    assert hash_ngrams("confused patient", 1000) == hash_ngrams("Confused  patient.", 1000)
    assert all(1 <= i < 1000 for i in hash_ngrams("a b c d", 1000))


def test_categorical_missing_level_or_mode():
    from healthfusion.features.tabular import StaticTransformer

    stays = pd.DataFrame({"stay_id": list("abcd"), "patient_id": list("abcd"), "prediction_time": 1.0})
    static = pd.DataFrame({"stay_id": list("abcd"), "unit": ["x", "x", "y", None]})
    cohort = Cohort(stays, static=static)
    level = StaticTransformer().fit(cohort, list("abcd"))
    assert "unit=<missing>" in level.feature_names_
    mode = StaticTransformer(categorical_missing="mode").fit(cohort, list("abc"))
    row = mode.transform(cohort, ["d"])[0]
    assert row[mode.feature_names_.index("unit=x")] == 1.0
    with pytest.raises(ValueError, match="categorical_missing"):
        StaticTransformer(categorical_missing="drop").fit(cohort, list("abcd"))
