"""Calibration metrics against scikit-learn on small cases, and recalibration fitted on validation data."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss

from healthfusion.evaluation.calibration import (
    brier_score,
    calibration_slope_intercept,
    calibration_summary,
    ece_from_curve,
    expected_calibration_error,
    reliability_curve,
)
from healthfusion.models.calibration import Calibrator, choose_calibrator


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 400)
    y = (rng.uniform(size=400) < p).astype(float)
    return y, p


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_matches_sklearn(data, strategy):
    y, p = data
    table = reliability_curve(y, p, n_bins=8, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=8, strategy=strategy)
    np.testing.assert_allclose(table["observed"], prob_true)
    np.testing.assert_allclose(table["mean_predicted"], prob_pred)
    assert table["n"].sum() == len(y)


def test_ece_by_hand_and_brier_matches_sklearn(data):
    y, p = data
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    counts = reliability_curve(y, p, n_bins=10)["n"].to_numpy()
    assert expected_calibration_error(y, p) == pytest.approx(np.sum(counts * np.abs(prob_true - prob_pred)) / len(y))
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))


def test_slope_matches_unpenalised_logistic_regression(data):
    y, p = data
    p_over = 1 / (1 + np.exp(-2.5 * np.log(p / (1 - p))))  # overconfident: slope well below 1
    result = calibration_slope_intercept(y, p_over)
    ref = LogisticRegression(C=np.inf).fit(np.log(p_over / (1 - p_over))[:, None], y)
    assert result["slope"] == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    assert result["slope"] < 0.6
    shifted = calibration_slope_intercept(y, p * 0.5)  # underestimated risk: intercept > 0
    assert shifted["intercept"] > 0.3


def test_summary_has_intervals(data):
    y, p = data
    table = calibration_summary(y, p, n_boot=50)
    assert list(table["metric"]) == ["ece", "brier", "slope", "intercept"]
    assert (table["ci_low"] < table["ci_high"]).all()
    brier = table.set_index("metric").loc["brier"]
    assert brier["ci_low"] <= brier["value"] <= brier["ci_high"]
    assert (table["n"] == len(y)).all()
    values = table.set_index("metric")["value"]
    fitted = calibration_slope_intercept(y, p)
    assert values["slope"] == pytest.approx(fitted["slope"]) and values["intercept"] == pytest.approx(fitted["intercept"])
    assert values["ece"] == pytest.approx(expected_calibration_error(y, p))
    assert ece_from_curve(reliability_curve(y, p, n_bins=7)) == pytest.approx(expected_calibration_error(y, p, n_bins=7))


def test_temperature_scaling_improves_overconfident_model(data):
    y, p = data
    over = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))
    cal = Calibrator("temperature").fit(y[:200], over[:200])
    assert cal.params_["temperature"] == pytest.approx(3.0, rel=0.35)
    fixed = cal.transform(over[200:])
    assert log_loss(y[200:], fixed) < log_loss(y[200:], over[200:])
    assert np.array_equal(np.argsort(fixed), np.argsort(over[200:]))  # ranking kept


def test_isotonic_matches_sklearn(data):
    y, p = data
    cal = Calibrator("isotonic").fit(y[:200], p[:200])
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p[:200], y[:200])
    np.testing.assert_allclose(cal.transform(p[200:]), ref.predict(p[200:]))


def test_errors():
    with pytest.raises(ValueError, match="not fitted"):
        Calibrator().transform([0.2])
    with pytest.raises(ValueError, match="Unknown calibration method"):
        Calibrator("beta").fit([0, 1], [0.2, 0.8])
    with pytest.raises(ValueError, match="both outcomes"):
        Calibrator().fit([0, 0], [0.2, 0.8])
    with pytest.raises(ValueError, match="params lacks"):
        Calibrator.from_dict({"method": "platt", "params": {"slope": 1.0}})
    with pytest.raises(ValueError, match="strategy"):
        reliability_curve([0, 1], [0.2, 0.8], strategy="kmeans")


def test_platt_fixes_inflated_risks_and_round_trips(data):
    """Risks inflated as class weighting inflates them: Platt scaling brings the mean back to the event rate."""
    y, p = data
    inflated = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + 1.5)))
    cal = choose_calibrator(y[:200], inflated[:200])
    assert cal.method in ("platt", "isotonic") and cal.info_["log_loss"]["none"] > cal.info_["log_loss"][cal.method]
    fixed = cal.transform(inflated[200:])
    assert abs(fixed.mean() - y[200:].mean()) < abs(inflated[200:].mean() - y[200:].mean()) / 3
    again = Calibrator.from_dict(cal.to_dict()).transform(inflated[200:])
    np.testing.assert_array_equal(again, fixed)
    ref = LogisticRegression(C=1e6).fit(np.log(inflated[:200] / (1 - inflated[:200]))[:, None], y[:200])
    platt = Calibrator("platt").fit(y[:200], inflated[:200])
    assert platt.params_["slope"] == pytest.approx(ref.coef_[0, 0], rel=1e-3)


def test_choose_keeps_a_calibrated_model_close(data):
    y, p = data
    cal = choose_calibrator(y, p)
    assert np.abs(cal.transform(p) - p).mean() < 0.05
    assert np.isnan(cal.transform([np.nan]))[0]
