"""TIM from attention and ablation, per-task metrics, relative improvement and intervals over seeds."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score, silhouette_score

from healthfusion.evaluation.bootstrap import seed_interval
from healthfusion.evaluation.tim import (
    ablation_tim,
    attention_tim,
    cluster_metrics,
    main_metric_ci,
    plot_tim,
    relative_improvement,
    task_metrics,
    tim_agreement,
    valid_rows,
)

NAMES = ["a", "b", "c"]


def test_attention_tim_is_the_share_of_each_tasks_representation():
    attention = np.array([[[0, 0.25, 0.75], [1, 0, 0], [0.5, 0.5, 0]],
                          [[0, 0.75, 0.25], [0, 0, 1], [0.5, 0.5, 0]]])
    beta = np.array([[0.6, 0.2, 1.0], [0.4, 0.2, 1.0]])
    tim = attention_tim(NAMES, attention, beta)
    assert tim.loc["a", "a"] == pytest.approx(0.5)
    assert tim.loc["a", "b"] == pytest.approx((0.4 * 0.25 + 0.6 * 0.75) / 2)
    assert tim.loc["b", "a"] == pytest.approx(0.8 * 0.5)
    assert tim.loc["c", "a"] == pytest.approx(0.0)
    np.testing.assert_allclose(tim.sum(axis=1), 1.0)


def test_attention_tim_averages_over_present_rows_only():
    attention = np.zeros((2, 2, 2))
    attention[:, 0, 1] = 1
    attention[:, 1, 0] = 1
    beta = np.array([[0.0, 0.5], [1.0, 0.5]])
    present = np.array([[True, True], [False, True]])
    tim = attention_tim(["x", "y"], attention, beta, present)
    assert tim.loc["x", "x"] == 0.0 and tim.loc["x", "y"] == 1.0


def test_attention_tim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="Expected attention"):
        attention_tim(NAMES, np.zeros((4, 2, 2)), np.zeros((4, 2)))


def test_ablation_tim_signs_positive_when_the_removed_task_helped():
    kinds = {"a": "binary", "b": "regression", "c": "binary"}
    full = {"a": 0.8, "b": 2.0, "c": 0.7}
    without = {"a": {"b": 2.2, "c": 0.7}, "b": {"a": 0.72, "c": 0.77}}
    tim = ablation_tim(NAMES, kinds, full, without)
    assert tim.loc["b", "a"] == pytest.approx(0.1)  # MAE rose from 2.0 to 2.2 without a: a helps b
    assert tim.loc["a", "b"] == pytest.approx(0.1)  # AUROC fell 0.8 -> 0.72 without b
    assert tim.loc["c", "b"] == pytest.approx(-0.1)  # c improved without b
    assert np.isnan(tim.loc["a", "a"]) and tim["c"].isna().all()


def test_tim_agreement_is_spearman_off_diagonal():
    rng = np.random.default_rng(0)
    a = pd.DataFrame(rng.random((3, 3)), index=NAMES, columns=NAMES)
    b = a * 2 + 1
    assert tim_agreement(a, b)["spearman"] == pytest.approx(1.0)
    off = ~np.eye(3, dtype=bool)
    c = pd.DataFrame(rng.random((3, 3)), index=NAMES, columns=NAMES)
    expected = stats.spearmanr(a.to_numpy()[off], c.to_numpy()[off]).statistic
    assert tim_agreement(a, c)["spearman"] == pytest.approx(expected)


def test_relative_improvement_orientation():
    assert relative_improvement(0.84, 0.80, higher=True) == pytest.approx(0.05)
    assert relative_improvement(1.9, 2.0, higher=False) == pytest.approx(0.05)
    assert relative_improvement(-0.1, -0.2, higher=True) == pytest.approx(0.5)
    assert np.isnan(relative_improvement(1.0, 0.0, higher=True))


def test_seed_interval_is_a_t_interval():
    values = [0.1, 0.3, 0.2]
    mean, lo, hi = seed_interval(values)
    ref = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(0.2) and (lo, hi) == pytest.approx(ref)
    assert np.isnan(seed_interval([0.5])[1])
    assert seed_interval([0.2, 0.9, 0.95], bounds=(0.0, 1.0))[2] == 1.0  # clipped to the metric's range
    assert seed_interval([0.2, 0.9, 0.95])[2] > 1.0


def test_task_metrics_ignore_missing_labels():
    y = np.array([0, 1, np.nan, 1, 0, 1])
    p = np.array([0.1, 0.8, 0.9, 0.7, 0.4, 0.3])
    m = task_metrics("binary", y, p)
    keep = ~np.isnan(y)
    assert m["main"] == pytest.approx(roc_auc_score(y[keep], p[keep])) and m["n"] == 5
    assert valid_rows("multiclass", np.array([0, -1, 2])).tolist() == [True, False, True]
    assert valid_rows("multilabel", np.array([[0, 1], [np.nan, np.nan]])).tolist() == [True, False]
    reg = task_metrics("regression", np.array([1.0, np.nan, 3.0]), np.array([1.5, 0.0, 2.0]))
    assert reg["main_metric"] == "mae" and reg["main"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="No labelled row"):
        task_metrics("binary", np.array([np.nan]), np.array([0.5]))


def test_cluster_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(6, 1, (20, 2))])
    labels = np.array([0] * 30 + [2] * 20)
    m = cluster_metrics(emb, labels, 3)
    assert m["silhouette"] == pytest.approx(silhouette_score(emb, labels))
    assert m["sizes"] == [30, 0, 20] and m["n_clusters_used"] == 2
    assert np.isnan(cluster_metrics(emb, np.zeros(50, int), 3)["silhouette"])
    soft = np.eye(3)[labels]
    assert task_metrics("clustering", None, soft, embedding=emb)["main"] == pytest.approx(m["silhouette"])


def test_main_metric_ci_contains_the_point_value():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80).astype(float)
    p = np.clip(y * 0.3 + rng.random(80) * 0.7, 0, 1)
    ci = main_metric_ci("binary", y, p, n_boot=100)
    assert ci.ci_low <= ci.value <= ci.ci_high


def test_plot_tim_writes_a_png(tmp_path):
    tim = pd.DataFrame([[0.5, -0.2], [0.1, np.nan]], index=["x", "y"], columns=["x", "y"])
    path = plot_tim(tim, tmp_path / "tim.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_plot_tim_leaves_the_backend_and_pyplot_alone(tmp_path):
    import sys

    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_tim(pd.DataFrame([[1.0, 0.2], [0.3, 1.0]], index=["x", "y"], columns=["x", "y"]), tmp_path / "t.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_binary_task_metrics_carry_calibration_beside_auroc():
    from healthfusion.evaluation.calibration import calibration_slope_intercept, expected_calibration_error
    from healthfusion.evaluation.tim import task_metrics

    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, 400)
    y = (rng.uniform(size=400) < p * 0.5).astype(float)  # risks twice too high
    y[:7] = np.nan  # unlabelled rows are left out
    out = task_metrics("binary", y, p)
    keep = ~np.isnan(y)
    assert out["n"] == 393 and out["n_positive"] == int(y[keep].sum())
    assert out["ece"] == pytest.approx(expected_calibration_error(y[keep], p[keep]))
    fit = calibration_slope_intercept(y[keep], p[keep])
    assert out["cal_slope"] == pytest.approx(fit["slope"], rel=1e-5)
    assert out["cal_intercept"] == pytest.approx(fit["intercept"], rel=1e-5) and out["cal_intercept"] < 0
    assert "ece" not in task_metrics("regression", y[keep], p[keep])
