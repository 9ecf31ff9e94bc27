"""healthfusion.models.boosting: fit with NaN, early stopping, pickle-free round trip, column checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import log_loss, roc_auc_score

from healthfusion.models.base import ModelLoadError
from healthfusion.models.boosting import BoostingClassifier


def _planted(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """~15% positives; 2 informative of 5 features; 20% of entries missing; a name with a space and brackets."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    logit = 2.0 * X[:, 0] - 1.5 * X[:, 1] - 2.5
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    X[rng.random(X.shape) < 0.2] = np.nan
    cols = ["HR__last", "Lactate__max", "Gender=<missing>", "Urine [ml]", "x"]
    return pd.DataFrame(X, columns=cols), y


@pytest.fixture(scope="module")
def data():
    X, y = _planted(600, seed=0)
    return X.iloc[:400], y[:400], X.iloc[400:], y[400:]


@pytest.fixture(scope="module")
def fitted(data):
    X, y, _, _ = data
    return BoostingClassifier(n_estimators=300, min_child_samples=10, learning_rate=0.1).fit(X, y)


def test_fits_nan_features_and_finds_the_signal(fitted, data):
    _, _, X_te, y_te = data
    proba = fitted.predict_proba(X_te)
    assert proba.shape == (len(X_te), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert roc_auc_score(y_te, proba[:, 1]) > 0.7
    assert 1 <= fitted.n_trees_ <= 300 and fitted.best_iteration_ == fitted.n_trees_
    assert list(fitted.feature_names_in_) == list(X_te.columns)
    assert set(fitted.predict(X_te)) <= {0, 1}


def test_save_load_round_trip_gives_identical_probabilities(fitted, data, tmp_path):
    _, _, X_te, _ = data
    fitted.save(tmp_path / "gbm")
    assert sorted(p.name for p in (tmp_path / "gbm").iterdir()) == ["config.json", "model.txt"]
    config = json.loads((tmp_path / "gbm" / "config.json").read_text())
    assert config["format_version"] == 1 and config["feature_names"][3] == "Urine [ml]"
    loaded = BoostingClassifier.load(tmp_path / "gbm")
    np.testing.assert_array_equal(loaded.predict_proba(X_te), fitted.predict_proba(X_te))
    assert loaded.get_params() == fitted.get_params()
    assert loaded.n_trees_ == fitted.n_trees_


def test_columns_are_matched_by_name_and_differences_are_named(fitted, data):
    _, _, X_te, _ = data
    reordered = X_te[list(reversed(X_te.columns))]
    np.testing.assert_array_equal(fitted.predict_proba(reordered), fitted.predict_proba(X_te))
    wrong = X_te.drop(columns=["Lactate__max"]).assign(Lactate__min=0.0)
    with pytest.raises(ValueError, match=r"missing \['Lactate__max'\].*extra \['Lactate__min'\]"):
        fitted.predict_proba(wrong)
    with pytest.raises(ValueError, match=r"Expected X \[n_samples, 5\]"):
        fitted.predict_proba(X_te.to_numpy()[:, :4])


def test_deterministic_for_a_seed_and_cloneable(data):
    X, y, X_te, _ = data
    params = dict(n_estimators=60, min_child_samples=10, random_state=3)
    a = BoostingClassifier(**params).fit(X, y).predict_proba(X_te)
    b = clone(BoostingClassifier(**params)).fit(X, y).predict_proba(X_te)
    np.testing.assert_array_equal(a, b)


def test_eval_set_early_stopping_keeps_training_rows_only(data):
    X, y, X_te, y_te = data
    clf = BoostingClassifier(n_estimators=500, learning_rate=0.3, min_child_samples=10, early_stopping_rounds=10)
    clf.fit(X, y, eval_set=(X_te, y_te))
    assert clf.best_iteration_ < 500
    no_stop = BoostingClassifier(n_estimators=25, validation_fraction=None, min_child_samples=10).fit(X, y)
    assert no_stop.best_iteration_ is None and no_stop.n_trees_ == 25


def test_numpy_input_gets_positional_names(data):
    X, y, X_te, _ = data
    clf = BoostingClassifier(n_estimators=20, validation_fraction=None, min_child_samples=10).fit(X.to_numpy(), y)
    assert list(clf.feature_names_in_) == ["x0", "x1", "x2", "x3", "x4"]
    assert clf.predict_proba(X_te.to_numpy()).shape == (len(X_te), 2)


@pytest.mark.parametrize(
    ("params", "match"),
    [({"learning_rate": 0}, "learning_rate must be a number > 0"),
     ({"num_leaves": 1}, "num_leaves must be an integer >= 2"),
     ({"subsample": 1.5}, r"subsample must be a number in \(0.0, 1.0\]"),
     ({"validation_fraction": 0.7}, r"validation_fraction must be None or a number in \(0, 0.5\)"),
     ({"class_weight": "auto"}, "class_weight must be 'balanced' or None")],
)
def test_bad_parameters_are_named_at_fit(params, match, data):
    X, y, _, _ = data
    clf = BoostingClassifier(**params)  # constructors only store
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)


def test_bad_labels_and_features(data):
    X, y, _, _ = data
    with pytest.raises(ValueError, match="exactly two classes"):
        BoostingClassifier().fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="missing label"):
        BoostingClassifier().fit(X, np.where(np.arange(len(y)) == 0, np.nan, y))
    with pytest.raises(ValueError, match="not numeric"):
        BoostingClassifier().fit(X.assign(unit="MICU"), y)


def test_class_weight_balanced_raises_predicted_risk(data):
    X, y, X_te, _ = data
    base = dict(n_estimators=50, validation_fraction=None, min_child_samples=10)
    plain = BoostingClassifier(**base).fit(X, y).predict_proba(X_te)[:, 1].mean()
    balanced = BoostingClassifier(class_weight="balanced", **base).fit(X, y).predict_proba(X_te)[:, 1].mean()
    assert balanced > plain


def test_balanced_early_stopping_scores_validation_with_the_class_weights(data):
    X, y, X_te, y_te = data
    clf = BoostingClassifier(class_weight="balanced", n_estimators=400, learning_rate=0.05, min_child_samples=10,
                             early_stopping_rounds=400).fit(X, y, eval_set=(X_te, y_te))
    # with patience = n_estimators every tree is grown, and the recorded validation curve can be checked
    pos_weight = (len(y) - y.sum()) / y.sum()
    weights = np.where(y_te == 1, pos_weight, 1.0)
    p = clf.booster_.predict(X_te.to_numpy(), num_iteration=clf.best_iteration_)
    assert clf.booster_.best_score["val"]["binary_logloss"] == pytest.approx(
        log_loss(y_te, p, sample_weight=weights), rel=1e-5)


def test_load_rejects_other_folders(fitted, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        BoostingClassifier.load(tmp_path / "nothing")
    fitted.save(tmp_path / "gbm")
    config = json.loads((tmp_path / "gbm" / "config.json").read_text())
    (tmp_path / "gbm" / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="version 99"):
        BoostingClassifier.load(tmp_path / "gbm")
    (tmp_path / "gbm" / "config.json").write_text(json.dumps({**config, "n_trees": config["n_trees"] + 1}))
    with pytest.raises(ModelLoadError, match="does not match"):
        BoostingClassifier.load(tmp_path / "gbm")
