"""healthfusion.evaluation.bootstrap: reproducibility, coverage, width, skipping, the per-metric table."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn.metrics import mean_absolute_error

from healthfusion.evaluation.bootstrap import (
    CI_COLUMNS,
    BootstrapCI,
    bootstrap_ci,
    metrics_with_ci,
    resample_indices,
)
from healthfusion.evaluation.metrics import BINARY_METRICS, auroc, binary_metrics


def _binormal(n: int, seed: int, d: float = 1.0, prevalence: float = 0.3):
    """Scores N(0,1) for negatives and N(d,1) for positives, squashed to (0,1); true AUROC = Phi(d / sqrt 2)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    score = rng.normal(size=n) + d * y
    return y, 1.0 / (1.0 + np.exp(-score))


TRUE_AUROC = 0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0) / math.sqrt(2.0)))  # Phi(1 / sqrt 2) ~ 0.760


def test_reproducible_by_seed():
    y, p = _binormal(150, 0)
    a = bootstrap_ci(auroc, y, p, n_boot=200, seed=7)
    b = bootstrap_ci(auroc, y, p, n_boot=200, seed=7)
    c = bootstrap_ci(auroc, y, p, n_boot=200, seed=8)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert isinstance(a, BootstrapCI) and a.n == 150 and a.n_boot == 200 and a.n_skipped == 0
    assert a.value == auroc(y, p)
    t1 = metrics_with_ci(y, p, n_boot=100, seed=3)
    t2 = metrics_with_ci(y, p, n_boot=100, seed=3)
    assert t1.equals(t2)


def test_ci_covers_true_auroc_at_a_reasonable_rate():
    covered = 0
    reps = 100
    for rep in range(reps):
        y, p = _binormal(200, seed=1000 + rep)
        row = metrics_with_ci(y, p, n_boot=200, seed=rep).set_index("metric").loc["auroc"]
        covered += row["ci_low"] <= TRUE_AUROC <= row["ci_high"]
    assert 0.85 <= covered / reps <= 1.0


def test_width_shrinks_with_n():
    widths = {}
    for n in (200, 2000):
        y, p = _binormal(n, seed=5)
        row = metrics_with_ci(y, p, n_boot=300, seed=0).set_index("metric").loc["auroc"]
        widths[n] = row["ci_high"] - row["ci_low"]
    assert widths[2000] < 0.6 * widths[200]  # ~ 1 / sqrt(10) expected


def test_stratified_resamples_keep_class_counts_and_chunks_add_up():
    y = np.array([0] * 7 + [1] * 3)
    chunks = list(resample_indices(y, n_boot=50, seed=0, stratified=True))
    idx = np.concatenate(chunks)
    assert idx.shape == (50, 10)
    assert (y[idx].sum(axis=1) == 3).all()
    plain = np.concatenate(list(resample_indices(y, n_boot=200, seed=0, stratified=False)))
    assert len(np.unique(y[plain].sum(axis=1))) > 1


def test_undefined_resamples_are_skipped_and_counted(caplog):
    y = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    p = np.linspace(0.1, 0.9, 8)
    with caplog.at_level(logging.WARNING, logger="healthfusion.evaluation"):
        ci = bootstrap_ci(auroc, y, p, n_boot=200, seed=0, stratified=False)
    assert 0 < ci.n_skipped < 200
    assert "resamples skipped" in caplog.text
    assert not math.isnan(ci.ci_low)


def test_all_skipped_gives_nan_interval():
    table = metrics_with_ci([1, 1, 1, 1], [0.2, 0.6, 0.7, 0.9], n_boot=50).set_index("metric")
    assert math.isnan(table.loc["auroc", "value"]) and math.isnan(table.loc["auroc", "ci_low"])
    assert table.loc["auroc", "n_skipped"] == 50
    assert table.loc["recall", "value"] == 0.75


def test_metrics_with_ci_table_shape_and_consistency():
    y, p = _binormal(300, seed=2)
    table = metrics_with_ci(y, p, threshold=0.6, n_boot=300, seed=1)
    assert tuple(table.columns) == CI_COLUMNS
    assert tuple(table["metric"]) == BINARY_METRICS
    assert (table["n"] == 300).all()
    point = binary_metrics(y, p, 0.6)
    by = table.set_index("metric")
    for name in BINARY_METRICS:
        assert by.loc[name, "value"] == pytest.approx(point[name])
        assert by.loc[name, "ci_low"] <= by.loc[name, "value"] <= by.loc[name, "ci_high"]
    # stratified: prevalence is fixed by design
    assert by.loc["prevalence", "ci_low"] == by.loc["prevalence", "ci_high"] == by.loc["prevalence", "value"]
    # the vectorised path and the generic path use the same resamples
    generic = bootstrap_ci(auroc, y, p, n_boot=300, seed=1)
    assert generic.ci_low == pytest.approx(by.loc["auroc", "ci_low"])
    assert generic.ci_high == pytest.approx(by.loc["auroc", "ci_high"])


def test_regression_needs_unstratified_resampling():
    rng = np.random.default_rng(0)
    y = rng.normal(size=100)
    f = y + rng.normal(size=100)
    with pytest.raises(ValueError, match="stratified=False"):
        bootstrap_ci(mean_absolute_error, y, f, n_boot=10)
    ci = bootstrap_ci(mean_absolute_error, y, f, n_boot=200, stratified=False)
    assert ci.ci_low < ci.value < ci.ci_high


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_boot": 0}, "positive integer"), ({"n_boot": 2.5}, "positive integer"), ({"alpha": 1.0}, "alpha")],
)
def test_bad_bootstrap_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(auroc, [0, 1, 0, 1], [0.1, 0.9, 0.4, 0.6], **kwargs)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="same number of rows"):
        bootstrap_ci(auroc, [0, 1, 0], [0.1, 0.9], n_boot=10)
    with pytest.raises(ValueError, match="same length"):
        metrics_with_ci([0, 1, 0], [0.1, 0.9], n_boot=10)
