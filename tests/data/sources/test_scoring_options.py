"""scoring_options: the reader options a model folder saves, given values first, then the reader's defaults."""

import pytest

from healthfusion.data.errors import SourceError
from healthfusion.data.sources import SCORING_OPTIONS, SOURCES, scoring_options


def test_every_source_declares_its_scoring_options():
    assert set(SCORING_OPTIONS) == set(SOURCES)


def test_given_values_win_and_defaults_fill_the_rest():
    mimic = scoring_options("mimic4", {"prediction_hours": 48.0, "out": "/tmp/x", "task": "in_hospital_death"})
    assert mimic == {"task": "in_hospital_death", "prediction_hours": 48.0, "min_stay_hours": None,
                     "lookback_hours": 24.0, "codes_at": "discharge", "lab_time": "charttime"}
    assert scoring_options("physionet2012", {"outcomes": "x.txt"}) == {"hours": 48.0}
    assert scoring_options("medmnist", {"split": "test", "positive_class": 0}) == {"positive_class": 0}
    assert scoring_options("synthetic", {"n_stays": 10, "seed": 1}) == {}  # data selection only
    with pytest.raises(SourceError, match="Did you mean 'eicu'"):
        scoring_options("eicuu", {})
