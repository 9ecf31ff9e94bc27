"""healthfusion.features.summary_encoding and CohortFeaturizer(summary=True): the wide input of the hybrid."""

import json

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.cohort import Cohort
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.features.summary_encoding import SummaryTransformer


def _cohort(future_value: float | None = None) -> Cohort:
    """Four stays, prediction time 10 h; HR observed in all, Lactate never in stay d."""
    stays = pd.DataFrame({"stay_id": list("abcd"), "patient_id": list("abcd"), "prediction_time": 10.0})
    rows = [(s, t, "HR", 60.0 + 10 * i + t) for i, s in enumerate("abcd") for t in (1.0, 5.0, 9.0)]
    rows += [(s, 3.0, "Lactate", 1.0 + i) for i, s in enumerate("abc")]
    if future_value is not None:
        rows += [(s, 12.0, "HR", future_value) for s in "abcd"]
    events = pd.DataFrame(rows, columns=["stay_id", "time", "variable", "value"])
    return Cohort(stays, events=events)


def test_piecewise_linear_encoding_of_each_statistic():
    cohort = _cohort()
    tr = SummaryTransformer(hours=10, stats=("max", "count"), n_bins=2, min_count=1).fit(cohort, list("abcd"))
    assert tr.variables_ == ["HR", "Lactate"]
    # HR max per stay 69, 79, 89, 99 -> edges at the 0/50/100% quantiles: 69, 84, 99
    assert tr.edges_["HR__max"] == [69.0, 84.0, 99.0]
    assert "HR__count" not in tr.edges_, "a constant column (every stay has 3 HR values) carries no information"
    x = tr.transform(cohort, list("abcd"))
    names = tr.feature_names_
    assert names[:2] == ["HR__max#0", "HR__max#1"] and names[-2:] == ["HR__unobserved", "Lactate__unobserved"]
    hr = x[:, :2]
    np.testing.assert_allclose(hr, [[0, 0], [10 / 15, 0], [1, 5 / 15], [1, 1]], rtol=1e-6)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    lactate_unobserved = x[:, names.index("Lactate__unobserved")]
    np.testing.assert_array_equal(lactate_unobserved, [0, 0, 0, 1])
    lactate_bins = [i for i, n in enumerate(names) if n.startswith("Lactate__max#")]
    assert (x[3, lactate_bins] == 0).all(), "a missing statistic encodes as all zeros"


def test_values_outside_the_training_range_saturate():
    cohort = _cohort()
    tr = SummaryTransformer(hours=10, stats=("max",), n_bins=2, min_count=1).fit(cohort, list("ab"))
    x = tr.transform(cohort, list("abcd"))
    np.testing.assert_allclose(x[2:, :2], 1.0)


def test_future_events_never_reach_the_summaries():
    ids = list("abcd")
    tr = SummaryTransformer(hours=10, min_count=1).fit(_cohort(), ids)
    np.testing.assert_array_equal(tr.transform(_cohort(), ids), tr.transform(_cohort(future_value=250.0), ids))
    planted = SummaryTransformer(hours=10, min_count=1).fit(_cohort(future_value=250.0), ids)
    assert planted.edges_ == tr.edges_, "events after the prediction time must not be fitted either"


def test_state_round_trip():
    cohort = _cohort()
    tr = SummaryTransformer(hours=10, min_count=1).fit(cohort, list("abcd"))
    # sorted keys, as saved models write the state: the encoded column order must not follow the dict order
    again = SummaryTransformer.from_state(json.loads(json.dumps(tr.get_state(), sort_keys=True)))
    assert list(again.edges_) != list(tr.edges_)
    np.testing.assert_array_equal(again.transform(cohort, list("abcd")), tr.transform(cohort, list("abcd")))


def test_bad_parameters():
    with pytest.raises(ValueError, match="n_bins must be an integer >= 1"):
        SummaryTransformer(n_bins=0).fit(_cohort(), list("abcd"))
    with pytest.raises(ValueError, match="enough training observations"):
        SummaryTransformer(hours=10, min_count=100).fit(_cohort(), list("abcd"))


def test_featurizer_appends_summaries_to_static_and_round_trips(tiny_cohort):
    ids = list(tiny_cohort.stay_ids)
    plain = CohortFeaturizer(("ts", "static"), label="death").fit(tiny_cohort, ids[:8])
    wide = CohortFeaturizer(("ts", "static"), label="death", summary=True).fit(tiny_cohort, ids[:8])
    base, ds = plain.transform(tiny_cohort, ids), wide.transform(tiny_cohort, ids)
    summary = wide.transformers_["summary"]
    assert summary.variables_ == wide.transformers_["ts"].variables_ and summary.hours == 48.0
    width = base["static"].shape[1]
    assert ds["static"].shape == (12, width + len(summary.feature_names_))
    assert wide.input_dims()["static_dim"] == ds["static"].shape[1]
    np.testing.assert_array_equal(ds["static"][:, :width], base["static"])
    restored = CohortFeaturizer.from_state(json.loads(json.dumps(wide.get_state())))
    assert restored.summary
    np.testing.assert_array_equal(restored.transform(tiny_cohort, ids)["static"], ds["static"])


def test_featurizer_summary_needs_static(tiny_cohort):
    with pytest.raises(ValueError, match="needs the 'static' modality"):
        CohortFeaturizer(("ts",), summary=True).fit(tiny_cohort, list(tiny_cohort.stay_ids))
