"""healthfusion.evaluation.metrics against scikit-learn as the reference."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn import metrics as skm

from healthfusion.evaluation.metrics import (
    BINARY_METRICS,
    auprc,
    auroc,
    binary_metrics,
    binary_metrics_batch,
    choose_threshold,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
)


def _binary_case(seed: int, n: int = 80, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    if decimals is not None:  # create ties
        p = np.round(p, decimals)
    return y, p


def _sk_binary(y, p, threshold):
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "auroc": skm.roc_auc_score(y, p),
        "auprc": skm.average_precision_score(y, p),
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=np.nan),
        "recall": skm.recall_score(y, pred, zero_division=np.nan),
        "specificity": tn / (tn + fp) if tn + fp else np.nan,
        "f1": skm.f1_score(y, pred, zero_division=np.nan),
        "brier": skm.brier_score_loss(y, p),
        "prevalence": y.mean(),
    }


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.95])
def test_binary_metrics_match_sklearn(seed, decimals, threshold):
    y, p = _binary_case(seed, decimals=decimals)
    got = binary_metrics(y, p, threshold)
    want = _sk_binary(y, p, threshold)
    for name in BINARY_METRICS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-12, err_msg=name)
    assert got["n"] == y.size and got["n_positive"] == int(y.sum()) and got["threshold"] == threshold


def test_auroc_auprc_functions_match_sklearn():
    y, p = _binary_case(11, n=300, decimals=2)
    assert auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert auprc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)


def test_threshold_is_inclusive_and_no_predicted_positive_gives_nan_precision():
    m = binary_metrics([0, 1, 1], [0.2, 0.5, 0.7], threshold=0.5)
    assert m["recall"] == 1.0 and m["precision"] == 1.0
    m = binary_metrics([0, 1, 1], [0.2, 0.5, 0.7], threshold=1.0)
    assert np.isnan(m["precision"]) and m["recall"] == 0.0 and m["f1"] == 0.0


def test_bool_and_float_labels_accepted():
    a = binary_metrics(np.array([False, True, True, False]), [0.1, 0.8, 0.6, 0.3])
    b = binary_metrics([0.0, 1.0, 1.0, 0.0], [0.1, 0.8, 0.6, 0.3])
    assert a == b


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_nan_auc_and_warning(label, caplog):
    with caplog.at_level(logging.WARNING, logger="healthfusion.evaluation.metrics"):
        m = binary_metrics([label] * 5, [0.1, 0.2, 0.6, 0.7, 0.9])
    assert np.isnan(m["auroc"]) and np.isnan(m["auprc"])
    assert "only one class" in caplog.text
    assert m["accuracy"] == pytest.approx(np.mean((np.array([0.1, 0.2, 0.6, 0.7, 0.9]) >= 0.5) == label))
    assert np.isnan(m["specificity"] if label == 1 else m["recall"])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1, 1], [0.2, 0.5], "same length, got 3 and 2"),
        ([0, 1], [0.2, 1.5], r"probabilities in \[0, 1\], got values in \[0.2, 1.5\]"),
        ([0, 1], [-0.1, 0.5], "sigmoid"),
        ([0, np.nan], [0.2, 0.5], "y_true without NaN, got 1 NaN"),
        ([0, 1], [np.nan, 0.5], "y_prob without NaN"),
        ([0, 2], [0.2, 0.5], r"only 0 and 1, got other value\(s\) \[2.0\]"),
        ([-1, 1], [0.2, 0.5], "only 0 and 1"),
        ([0, 1], [[0.8, 0.2], [0.3, 0.7]], "1-D array, got shape"),
        ([], [], "at least one sample"),
        (["no", "yes"], [0.2, 0.5], "numeric"),
    ],
)
def test_bad_binary_input_raises_clear_error(y, p, match):
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, p)


def test_bad_threshold_raises():
    with pytest.raises(ValueError, match=r"threshold in \[0, 1\], got 1.2"):
        binary_metrics([0, 1], [0.1, 0.9], threshold=1.2)


def test_batch_matches_rowwise():
    rng = np.random.default_rng(3)
    y = (rng.random((7, 40)) < 0.4).astype(float)
    y[0] = 0.0  # one undefined row
    p = np.round(rng.random((7, 40)), 1)
    batch = binary_metrics_batch(y, p, 0.4)
    for b in range(7):
        single = binary_metrics(y[b], p[b], 0.4)
        for name in BINARY_METRICS:
            np.testing.assert_allclose(batch[name][b], single[name], err_msg=name)


# ------------------------------------------------------------------------------------------------ thresholds
@pytest.mark.parametrize("seed", range(4))
def test_choose_threshold_youden_matches_sklearn_roc_curve(seed):
    y, p = _binary_case(seed, n=150, decimals=2)
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    j = tpr - fpr
    want = thr[np.flatnonzero(j == j.max())].max()
    assert choose_threshold(y, p, "youden") == pytest.approx(want)


@pytest.mark.parametrize("seed", range(4))
def test_choose_threshold_f1_is_best_candidate(seed):
    y, p = _binary_case(seed, n=150, decimals=2)
    t = choose_threshold(y, p, "f1")
    best = max(skm.f1_score(y, (p >= c).astype(int)) for c in np.unique(p))
    assert skm.f1_score(y, (p >= t).astype(int)) == pytest.approx(best)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_choose_threshold_sensitivity_is_highest_meeting_target(target):
    y, p = _binary_case(5, n=200, decimals=2)
    t = choose_threshold(y, p, "sensitivity", target=target)
    assert skm.recall_score(y, (p >= t).astype(int)) >= target
    higher = np.unique(p)[np.unique(p) > t]
    assert all(skm.recall_score(y, (p >= c).astype(int)) < target for c in higher)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rule": "roc"}, "Unknown threshold rule 'roc'; expected one of youden, sensitivity, f1"),
        ({"rule": "sensitivity"}, "needs a target sensitivity"),
        ({"rule": "sensitivity", "target": 1.5}, "needs a target sensitivity"),
        ({"rule": "youden", "target": 0.9}, "only used with rule='sensitivity'"),
    ],
)
def test_choose_threshold_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        choose_threshold([0, 1, 0, 1], [0.1, 0.8, 0.3, 0.6], **kwargs)


def test_choose_threshold_single_class_raises():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1, 1], [0.1, 0.8, 0.3])


# ------------------------------------------------------------------------------------------------ multiclass
def _multiclass_case(seed, n=120, k=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_matches_sklearn(seed):
    y, p = _multiclass_case(seed)
    got = multiclass_metrics(y, p)
    pred = p.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=np.nan))
    assert got["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert got["auroc_macro"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert (got["n"], got["n_classes"]) == (120, 4)


def test_multiclass_absent_class_averages_over_present_ones(caplog):
    y, p = _multiclass_case(0)
    keep = y != 3
    with caplog.at_level(logging.WARNING):
        got = multiclass_metrics(y[keep], p[keep])
    ovr = [skm.roc_auc_score(y[keep] == c, p[keep, c]) for c in range(3)]
    assert got["auroc_macro"] == pytest.approx(np.mean(ovr))
    assert "class 3" in caplog.text


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 3], [[0.5, 0.5], [0.2, 0.8]], r"class indices 0..1 \(y_prob has 2 columns\)"),
        ([0, 1], [[0.5, 0.6], [0.2, 0.8]], "sum to 1"),
        ([0, 1], [0.5, 0.2], "2-D array"),
        ([0, 1, 1], [[0.5, 0.5], [0.2, 0.8]], "same number of rows"),
    ],
)
def test_multiclass_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        multiclass_metrics(y, p)


# ------------------------------------------------------------------------------------------------ multilabel
def test_multilabel_matches_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((150, 5)) < [0.1, 0.3, 0.5, 0.2, 0.05]).astype(int)
    p = np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1)
    got = multilabel_metrics(y, p, threshold=0.4)
    pred = (p >= 0.4).astype(int)
    assert got["auroc_macro"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"))
    assert got["auprc_macro"] == pytest.approx(skm.average_precision_score(y, p, average="macro"))
    assert got["auroc_micro"] == pytest.approx(skm.roc_auc_score(y, p, average="micro"))
    assert got["f1_micro"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=np.nan))
    assert (got["n"], got["n_labels"]) == (150, 5)


def test_multilabel_label_without_positives_is_left_out(caplog):
    rng = np.random.default_rng(1)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    y[:, 2] = 0
    p = rng.random(y.shape)
    with caplog.at_level(logging.WARNING):
        got = multilabel_metrics(y, p)
    want = np.mean([skm.roc_auc_score(y[:, j], p[:, j]) for j in range(2)])
    assert got["auroc_macro"] == pytest.approx(want)
    assert "label 2" in caplog.text


def test_multilabel_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_metrics([[0, 2]], [[0.1, 0.2]])


# ------------------------------------------------------------------------------------------------ regression
def test_regression_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(size=100)
    f = y + rng.normal(scale=0.5, size=100)
    got = regression_metrics(y, f)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, f))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, f)))
    assert got["r2"] == pytest.approx(skm.r2_score(y, f))
    assert got["n"] == 100


def test_regression_constant_target_r2_nan_and_bad_input(caplog):
    with caplog.at_level(logging.WARNING):
        got = regression_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert np.isnan(got["r2"]) and got["mae"] == pytest.approx(2 / 3)
    assert "constant" in caplog.text
    with pytest.raises(ValueError, match="same length"):
        regression_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="y_pred without NaN"):
        regression_metrics([1.0, 2.0], [1.0, np.nan])
