"""healthfusion.models.classical: every baseline fits NaN features and finds a planted signal."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from healthfusion.models.classical import BASELINES, SVMClassifier, make_baseline


def _planted(n: int, seed: int):
    """Imbalanced (~15% positive) problem: 2 informative of 6 features, 20% of entries missing."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    logit = 2.0 * X[:, 0] - 1.5 * X[:, 1] - 2.5
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    X[rng.random(X.shape) < 0.2] = np.nan
    return X, y


def _small(name: str, **kwargs):
    """The baseline with fewer trees, for tests that check plumbing rather than accuracy."""
    model = make_baseline(name, **kwargs)
    if "n_estimators" in model.steps[-1][1].get_params():
        model.set_params(model__n_estimators=40)
    return model


@pytest.fixture(scope="module")
def data():
    X, y = _planted(600, seed=0)
    return X[:400], y[:400], X[400:], y[400:]


@pytest.mark.parametrize("name", BASELINES)
def test_fits_nan_features_and_beats_chance(name, data):
    X_tr, y_tr, X_te, y_te = data
    assert 0.05 < y_tr.mean() < 0.3 and np.isnan(X_tr).any()
    model = make_baseline(name, seed=0).fit(X_tr, y_tr)
    proba = model.predict_proba(X_te)
    assert proba.shape == (len(X_te), 2)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert roc_auc_score(y_te, proba[:, 1]) > 0.7
    assert model.steps[-1][0] == "model"


@pytest.mark.parametrize("name", BASELINES)
def test_deterministic_given_seed(name, data):
    X_tr, y_tr, X_te, _ = data
    a = _small(name, seed=3).fit(X_tr, y_tr).predict_proba(X_te)
    b = _small(name, seed=3).fit(X_tr, y_tr).predict_proba(X_te)
    np.testing.assert_allclose(a, b)


@pytest.mark.parametrize("name", BASELINES)
def test_unweighted_and_all_missing_column(name, data):
    X_tr, y_tr, X_te, _ = data
    X_tr = X_tr.copy()
    X_tr[:, 5] = np.nan
    model = _small(name, class_weight=None).fit(X_tr, y_tr)
    assert model.predict_proba(X_te).shape == (len(X_te), 2)


def test_balanced_weighting_raises_predicted_risk(data):
    X_tr, y_tr, X_te, _ = data
    weighted = make_baseline("logistic_regression", class_weight="balanced").fit(X_tr, y_tr)
    plain = make_baseline("logistic_regression", class_weight=None).fit(X_tr, y_tr)
    assert weighted.predict_proba(X_te)[:, 1].mean() > plain.predict_proba(X_te)[:, 1].mean()


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match="Did you mean 'random_forest'") as err:
        make_baseline("random_forrest")
    assert all(name in str(err.value) for name in BASELINES)
    with pytest.raises(ValueError, match="expected one of logistic_regression"):
        make_baseline("transformer")


def test_bad_class_weight():
    with pytest.raises(ValueError, match="class_weight 'balanced' or None, got 'auto'"):
        make_baseline("svm", class_weight="auto")


def test_svm_switches_to_linear_kernel_above_cap(data):
    X_tr, y_tr, _, _ = data
    X = np.nan_to_num(X_tr)
    small = SVMClassifier(max_rbf_samples=1000).fit(X, y_tr)
    large = SVMClassifier(max_rbf_samples=100).fit(X, y_tr)
    assert (small.kernel_, large.kernel_) == ("rbf", "linear")
    assert large.decision_function(X).shape == (len(X),)
    assert clone(large).get_params()["max_rbf_samples"] == 100
    with pytest.raises(ValueError, match="Unknown kernel 'poly'"):
        SVMClassifier(kernel="poly").fit(X, y_tr)
