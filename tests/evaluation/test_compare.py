"""healthfusion.evaluation.compare: the model comparison table, formatting and risk groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from healthfusion.evaluation.bootstrap import metrics_with_ci, paired_difference_ci, resample_indices
from healthfusion.evaluation.calibration import (
    calibration_metrics_batch,
    calibration_slope_intercept,
    calibration_with_ci,
    expected_calibration_error,
)
from healthfusion.evaluation.compare import (
    COMPARISON_METRICS,
    comparison_table,
    difference_table,
    format_ci,
    format_comparison,
    risk_groups,
)


@pytest.fixture
def results():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.25).astype(int)
    good = np.clip(0.5 * y + 0.5 * rng.random(200), 0, 1)
    weak = np.clip(0.15 * y + 0.85 * rng.random(200), 0, 1)
    y2 = (rng.random(120) < 0.4).astype(int)
    other = np.clip(0.3 * y2 + 0.7 * rng.random(120), 0, 1)
    return {"good": (y, good), "weak": (y, weak), "other_cohort": (y2, other)}


def test_comparison_table_rows_columns_and_values(results):
    table = comparison_table(results, threshold=0.5, n_boot=200, seed=0)
    assert list(table.index) == ["good", "weak", "other_cohort"]
    assert table.index.name == "model"
    expected = ["n", "n_positive", "threshold"]
    for m in COMPARISON_METRICS:
        expected += [m, f"{m}_ci_low", f"{m}_ci_high"]
    assert list(table.columns) == expected
    ref = pd.concat([metrics_with_ci(*results["weak"], threshold=0.5, n_boot=200, seed=0),
                     calibration_with_ci(*results["weak"], n_boot=200, seed=0)]).set_index("metric")
    for m in COMPARISON_METRICS:
        assert table.loc["weak", m] == pytest.approx(ref.loc[m, "value"])
        assert table.loc["weak", f"{m}_ci_low"] == pytest.approx(ref.loc[m, "ci_low"])
    assert table.loc["good", "auroc"] > table.loc["weak", "auroc"]
    assert table.loc["other_cohort", "n"] == 120
    assert table.loc["good", "n_positive"] == int(results["good"][0].sum())


def test_per_model_thresholds(results):
    thresholds = {"good": 0.4, "weak": 0.6, "other_cohort": 0.5}
    table = comparison_table(results, threshold=thresholds, n_boot=50)
    assert table["threshold"].to_dict() == thresholds
    with pytest.raises(ValueError, match="No threshold for model 'weak'"):
        comparison_table(results, threshold={"good": 0.4}, n_boot=50)


def test_bad_results_name_the_model():
    with pytest.raises(ValueError, match="non-empty dict"):
        comparison_table({}, n_boot=10)
    with pytest.raises(ValueError, match=r"Model 'm': .*same length"):
        comparison_table({"m": ([0, 1, 1], [0.2, 0.4])}, n_boot=10)
    with pytest.raises(ValueError, match="pair"):
        comparison_table({"m": [0.2, 0.4, 0.5]}, n_boot=10)


@pytest.mark.parametrize(
    ("args", "want"),
    [
        ((0.8734, 0.8512, 0.8941), "0.873 (0.851-0.894)"),
        ((0.5, float("nan"), float("nan")), "0.500 (n/a)"),
        ((float("nan"), float("nan"), float("nan")), "n/a"),
        ((-0.05, -0.12, 0.02), "-0.050 (-0.120 to 0.020)"),
    ],
)
def test_format_ci(args, want):
    assert format_ci(*args) == want


def test_format_ci_digits():
    assert format_ci(0.87345, 0.8, 0.9, digits=2) == "0.87 (0.80-0.90)"


def test_format_comparison(results):
    table = comparison_table(results, n_boot=50)
    text = format_comparison(table)
    assert list(text.columns) == ["n", *COMPARISON_METRICS]
    assert text.loc["good", "auroc"] == format_ci(
        table.loc["good", "auroc"], table.loc["good", "auroc_ci_low"], table.loc["good", "auroc_ci_high"]
    )
    with pytest.raises(ValueError, match="comparison_table"):
        format_comparison(table[["n"]])


def test_risk_groups():
    groups = risk_groups([0.1, 0.5, 0.49, 0.9], threshold=0.5)
    assert groups.tolist() == ["low", "high", "low", "high"]
    assert risk_groups(np.array([0.2, 0.3]), threshold=0.25).tolist() == ["low", "high"]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        risk_groups([0.1, 1.2])
    with pytest.raises(ValueError, match="NaN"):
        risk_groups([0.1, np.nan])
    with pytest.raises(ValueError, match="threshold"):
        risk_groups([0.1], threshold=-0.1)


def test_calibration_columns_match_the_reference_functions(results):
    y, p = results["weak"]
    table = comparison_table(results, n_boot=50)
    ref = calibration_slope_intercept(y, p)
    assert table.loc["weak", "ece"] == pytest.approx(expected_calibration_error(y, p))
    assert table.loc["weak", "cal_slope"] == pytest.approx(ref["slope"], rel=1e-6)
    assert table.loc["weak", "cal_intercept"] == pytest.approx(ref["intercept"], rel=1e-6, abs=1e-9)
    # the batched resample values equal the one-at-a-time functions
    idx = next(resample_indices(y, 5, seed=1))
    batch = calibration_metrics_batch(y[idx], p[idx])
    for k in range(5):
        one = calibration_slope_intercept(y[idx[k]], p[idx[k]])
        assert batch["ece"][k] == pytest.approx(expected_calibration_error(y[idx[k]], p[idx[k]]))
        assert batch["cal_slope"][k] == pytest.approx(one["slope"], rel=1e-6)
    assert np.isnan(calibration_metrics_batch(np.zeros(5), np.full(5, 0.2))["cal_slope"][0])
    assert "ece" in format_comparison(table).columns


def test_paired_difference_is_paired_and_matches_the_point_difference(results):
    y, good = results["good"]
    _, weak = results["weak"]
    diff = paired_difference_ci(y, good, weak, n_boot=300, seed=0).set_index("metric")
    assert diff.loc["auroc", "value"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak))
    assert diff.loc["auroc", "ci_low"] > 0  # the better model's advantage excludes 0
    same = paired_difference_ci(y, good, good, n_boot=100).set_index("metric")
    assert same.loc["auroc", ["value", "ci_low", "ci_high"]].tolist() == [0.0, 0.0, 0.0]  # paired: no noise

    frame = pd.DataFrame({"y_true": y, "good": good, "weak": weak})
    frame.loc[:9, "good"] = np.nan  # compared on the stays both scored
    table = difference_table(frame, ["good", "weak"], "weak", n_boot=100)
    assert list(table.index) == ["good"] and table.loc["good", "n"] == len(y) - 10
    assert table.loc["good", "reference"] == "weak"
    assert {"auroc_diff", "auroc_diff_ci_low", "auprc_diff_ci_high"} <= set(table.columns)
    with pytest.raises(ValueError, match="not in the predictions"):
        difference_table(frame, ["nope"], "weak")
