"""The Challenge 2012 scores on inputs small enough to compute by hand."""

import numpy as np
import pytest

from healthfusion.evaluation.challenge2012 import event1_score, hosmer_lemeshow_h


def test_event1_is_the_smaller_of_sensitivity_and_ppv():
    out = event1_score([1, 0, 1, 0], [0.9, 0.8, 0.2, 0.1], threshold=0.5)
    assert (out["sensitivity"], out["ppv"], out["score"]) == (0.5, 0.5, 0.5)
    out = event1_score([1, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6, 0.1], threshold=0.55)
    assert out["sensitivity"] == 1.0 and out["ppv"] == 0.75 and out["score"] == 0.75
    assert (out["n"], out["n_positive"], out["n_high"]) == (5, 3, 4)
    # the threshold is inclusive: a risk equal to it is high risk
    assert event1_score([1, 0], [0.5, 0.2], threshold=0.5)["score"] == 1.0


def test_event1_with_nobody_high_risk_scores_zero():
    out = event1_score([1, 0, 0], [0.3, 0.2, 0.1], threshold=0.9)
    assert out["score"] == 0.0 and out["n_high"] == 0


def test_h_statistic_by_hand():
    # 10 stays, groups of one: five at risk 0.1 who survive, five at 0.9 who die.
    # each term (0.1)^2 / (0.1 * 0.9 + 0.001) = 0.01 / 0.091; ten of them, divided by the range 0.9 - 0.1
    y = [0] * 5 + [1] * 5
    p = [0.1] * 5 + [0.9] * 5
    out = hosmer_lemeshow_h(y, p)
    assert out["h"] == pytest.approx(10 * 0.01 / 0.091 / 0.8)
    assert out["group_size"] == 1 and out["n_used"] == 10
    assert out["observed"] == [0.0] * 5 + [1.0] * 5


def test_h_statistic_leaves_out_the_highest_risk_remainder():
    y = [0] * 5 + [1] * 5
    p = [0.1] * 5 + [0.9] * 5
    more = hosmer_lemeshow_h(y + [0, 0, 0], p + [0.99, 0.99, 0.99])  # 13 stays: groups of 1, the top 3 left over
    assert more["n"] == 13 and more["n_used"] == 10
    assert more["h"] == pytest.approx(hosmer_lemeshow_h(y, p)["h"])


def test_h_statistic_is_larger_for_miscalibrated_risks():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.6, 2000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    calibrated = hosmer_lemeshow_h(y, p)["h"]
    assert hosmer_lemeshow_h(y, np.clip(p * 1.5, 0, 1))["h"] > 5 * calibrated


@pytest.mark.parametrize("y, p, match", [([1, 2], [0.1, 0.2], "0/1"), ([1, 0], [0.1, 1.2], r"\[0, 1\]"),
                                         ([1, 0, 1], [0.1, 0.2], "one risk per stay")])
def test_bad_input_is_named(y, p, match):
    with pytest.raises(ValueError, match=match):
        event1_score(y, p, 0.5)


def test_h_needs_ten_stays():
    with pytest.raises(ValueError, match="at least 10"):
        hosmer_lemeshow_h([0, 1, 0], [0.1, 0.5, 0.2])


def test_the_se_ppv_operating_point_maximises_event1_on_validation():
    from healthfusion.evaluation.metrics import choose_threshold

    y = [1, 1, 0, 1, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    # thresholds 0.9: Se 1/3, PPV 1 -> 1/3; 0.8: 2/3, 1 -> 2/3; 0.7: 2/3, 2/3 -> 2/3; 0.6: 1, 3/4 -> 3/4 (best)
    assert choose_threshold(y, p, rule="se_ppv") == 0.6
    assert event1_score(y, p, 0.6)["score"] == 0.75
    best = max(event1_score(y, p, t)["score"] for t in p)
    assert event1_score(y, p, choose_threshold(y, p, rule="se_ppv"))["score"] == best


def _risks(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.7, n)
    return (rng.uniform(size=n) < p).astype(int), p


def test_intervals_hold_the_point_scores_and_repeat_with_the_seed():
    from healthfusion.evaluation.challenge2012 import challenge_scores_with_ci

    y, p = _risks(600)
    out = challenge_scores_with_ci(y, p, threshold=0.4, n_boot=300, seed=3)
    assert out["event1"] == event1_score(y, p, 0.4)["score"]
    assert out["event2_h"] == hosmer_lemeshow_h(y, p)["h"]
    assert out["event1_ci_low"] < out["event1"] < out["event1_ci_high"]
    assert out["event2_h_ci_low"] < out["event2_h_ci_high"]
    assert (out["n"], out["n_positive"], out["n_event2"], out["n_boot"]) == (600, int(y.sum()), 600, 300)
    assert challenge_scores_with_ci(y, p, threshold=0.4, n_boot=300, seed=3) == out
    assert challenge_scores_with_ci(y, p, threshold=0.4, n_boot=300, seed=4)["event1_ci_low"] != out["event1_ci_low"]


def test_batched_scores_equal_the_one_at_a_time_functions():
    from healthfusion.evaluation.bootstrap import resample_indices
    from healthfusion.evaluation.challenge2012 import _event1_batch, _h_batch

    y, p = _risks(137, seed=1)  # 137 stays: groups of 13, the 7 highest risks left over
    idx = next(resample_indices(y, 20, seed=0))
    h = _h_batch(y[idx].astype(float), p[idx])
    e1 = _event1_batch(y[idx].astype(float), p[idx], 0.35)
    for row, i in enumerate(idx):
        assert h[row] == pytest.approx(hosmer_lemeshow_h(y[i], p[i])["h"], rel=1e-12)
        assert e1[row] == pytest.approx(event1_score(y[i], p[i], 0.35)["score"], abs=1e-15)


def test_resamples_keep_the_deaths_count_and_intervals_shrink_with_more_stays():
    from healthfusion.evaluation.challenge2012 import challenge_scores_with_ci

    small = challenge_scores_with_ci(*_risks(300), threshold=0.4, n_boot=300)
    large = challenge_scores_with_ci(*_risks(3000), threshold=0.4, n_boot=300)
    width = lambda o, m: o[f"{m}_ci_high"] - o[f"{m}_ci_low"]  # noqa: E731
    assert width(large, "event1") < width(small, "event1") / 2
    # a model with a single risk for everyone: every resample has H infinite, so does the interval
    y = np.array([0, 1] * 10)
    flat = challenge_scores_with_ci(y, np.full(20, 0.5), threshold=0.5, n_boot=50)
    assert flat["event1"] == 0.5 and flat["event1_ci_low"] == flat["event1_ci_high"] == 0.5  # deaths fixed per resample
    assert np.isinf(flat["event2_h"]) and np.isinf(flat["event2_h_ci_low"])


def test_fewer_than_ten_stays_give_event1_with_an_interval_and_no_h():
    from healthfusion.evaluation.challenge2012 import challenge_scores_with_ci

    out = challenge_scores_with_ci([1, 0, 1, 0, 0], [0.9, 0.2, 0.6, 0.7, 0.1], threshold=0.5, n_boot=50)
    assert out["event1"] == pytest.approx(2 / 3) and np.isnan(out["event2_h"]) and out["n_event2"] == 0
    with pytest.raises(ValueError, match="alpha"):
        challenge_scores_with_ci([1, 0], [0.9, 0.2], threshold=0.5, alpha=1.5)


def test_the_printed_table_shows_intervals_and_reads_tables_written_before_them():
    import pandas as pd

    from healthfusion.workflows.evaluate import display_challenge

    new = pd.DataFrame({"n": [1200], "n_positive": [168], "threshold": [0.35], "sensitivity": [0.548], "ppv": [0.511],
                        "event1": [0.511], "event1_ci_low": [0.455], "event1_ci_high": [0.567], "event2_h": [35.48],
                        "event2_h_ci_low": [17.2], "event2_h_ci_high": [97.5], "n_event2": [1200], "n_boot": [1000]},
                       index=pd.Index(["ensemble"], name="model"))
    shown, title = display_challenge(new)
    row = shown.iloc[0]
    assert (row["n (deaths)"], row["event1"], row["event2_h"]) == ("1200 (168)", "0.511 (0.455-0.567)",
                                                                   "35.5 (17.2-97.5)")
    assert "1000 resamples" in title
    old = new[["n", "threshold", "sensitivity", "ppv", "event1", "event2_h", "n_event2"]]
    shown, title = display_challenge(old)
    assert (shown.iloc[0]["n"], shown.iloc[0]["event1"]) == (1200, "0.511") and "resamples" not in title
