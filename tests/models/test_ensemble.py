"""healthfusion.models.ensemble: convex weights fitted on validation predictions, combination, JSON spec."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from healthfusion.models.ensemble import EnsembleWeights, combine, fit_weights, simplex_grid


def _planted(n: int = 2000, seed: int = 0):
    """A latent risk; member "good" sees it with little noise, "weak" with much more."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2.0 * z - 2.0)))).astype(int)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    return y, {"good": sig(2.0 * z - 2.0 + rng.normal(scale=0.3, size=n)),
               "weak": sig(2.0 * z - 2.0 + rng.normal(scale=3.0, size=n))}


@pytest.mark.parametrize("criterion", ["log_loss", "auroc"])
@pytest.mark.parametrize("how", ["logit", "probability"])
def test_fitted_weights_are_convex_and_favour_the_better_member(criterion, how):
    y, probs = _planted()
    spec = fit_weights(probs, y, combine=how, criterion=criterion, step=0.05)
    assert spec.members == ("good", "weak")
    assert sum(spec.weights) == pytest.approx(1.0) and min(spec.weights) >= 0
    assert spec.weight("good") > 0.7
    assert spec.fit_info["criterion"] == criterion and spec.fit_info["n_validation"] == len(y)
    assert spec.fit_info["ensemble_score"] >= max(spec.fit_info["member_scores"].values()) - 1e-12


def test_combining_identical_members_returns_them():
    p = np.array([0.01, 0.2, 0.5, 0.9, 0.999])
    for how in ("logit", "probability"):
        spec = EnsembleWeights(("a", "b", "c"), (0.2, 0.3, 0.5), combine=how)
        np.testing.assert_allclose(combine({"a": p, "b": p, "c": p}, spec), p, rtol=1e-9)
    # a member with weight 1 is returned as is
    q = np.array([0.3, 0.6, 0.1, 0.2, 0.4])
    np.testing.assert_allclose(combine({"a": p, "b": q}, EnsembleWeights(("a", "b"), (0.0, 1.0))), q, rtol=1e-9)


def test_logit_combination_is_the_weighted_mean_of_log_odds():
    a, b = np.array([0.2, 0.7]), np.array([0.6, 0.9])
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    expected = 1 / (1 + np.exp(-(0.25 * logit(a) + 0.75 * logit(b))))
    np.testing.assert_allclose(combine({"a": a, "b": b}, EnsembleWeights(("a", "b"), (0.25, 0.75))), expected)
    np.testing.assert_allclose(combine({"a": a, "b": b}, EnsembleWeights(("a", "b"), (0.25, 0.75), "probability")),
                               0.25 * a + 0.75 * b)


def test_ensemble_of_complementary_members_beats_each():
    rng = np.random.default_rng(1)
    n = 4000
    z1, z2 = rng.normal(size=n), rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * z1 + 1.5 * z2 - 2)))).astype(int)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    probs = {"one": sig(1.5 * z1 - 1.5), "two": sig(1.5 * z2 - 1.5)}
    spec = fit_weights({k: v[:2000] for k, v in probs.items()}, y[:2000])
    assert spec.weights == pytest.approx((0.5, 0.5), abs=0.1)
    test = combine({k: v[2000:] for k, v in probs.items()}, spec)
    assert roc_auc_score(y[2000:], test) > max(roc_auc_score(y[2000:], v[2000:]) for v in probs.values()) + 0.05


def test_json_round_trip(tmp_path):
    y, probs = _planted(500)
    spec = fit_weights(probs, y, step=0.1)
    loaded = EnsembleWeights.load(spec.save(tmp_path / "ens" / "ensemble.json"))
    assert loaded == spec and loaded.fit_info == spec.fit_info
    np.testing.assert_array_equal(combine(probs, loaded), combine(probs, spec))
    with pytest.raises(ValueError, match="format"):
        EnsembleWeights.from_dict({**spec.to_dict(), "format_version": 2})


def test_simplex_grid():
    grid = simplex_grid(3, 0.25)
    assert grid.shape == (15, 3)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="step must divide 1"):
        simplex_grid(2, 0.3)
    with pytest.raises(ValueError, match="larger step"):
        simplex_grid(12, 0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(members=("a", "a"), weights=(0.5, 0.5)), "distinct"),
     (dict(members=("a", "b"), weights=(0.5,)), "one weight per member"),
     (dict(members=("a", "b"), weights=(0.7, 0.7)), "sum to 1"),
     (dict(members=("a", "b"), weights=(1.5, -0.5)), ">= 0"),
     (dict(members=("a",), weights=(1.0,), combine="median"), "Unknown combine")],
)
def test_invalid_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EnsembleWeights(**kwargs)


def test_bad_inputs_are_named():
    spec = EnsembleWeights.uniform(["a", "b"])
    with pytest.raises(ValueError, match=r"missing \['b'\], extra \['c'\]"):
        combine({"a": np.array([0.5]), "c": np.array([0.5])}, spec)
    with pytest.raises(ValueError, match="differ in length"):
        combine({"a": np.array([0.5]), "b": np.array([0.5, 0.2])}, spec)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        combine({"a": np.array([1.5]), "b": np.array([0.5])}, spec)
    with pytest.raises(ValueError, match=r"predict_proba\(X\)\[:, 1\]"):
        combine({"a": np.full((2, 2), 0.5), "b": np.array([0.5, 0.5])}, spec)
    with pytest.raises(ValueError, match="single class"):
        fit_weights({"a": np.array([0.2, 0.4]), "b": np.array([0.1, 0.3])}, np.array([1, 1]))


def _calibrated_and_miscalibrated(n=4000, seed=0):
    """Member a: calibrated on half the signal. Member b: most of the other half too, but shifted and 6x
    over-confident, so its probabilities cost log-loss although it ranks stays well."""
    rng = np.random.default_rng(seed)
    z1, z2 = rng.normal(size=n), rng.normal(size=n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(-2 + 1.5 * z1 + 0.8 * z2)))).astype(float)
    a = 1 / (1 + np.exp(-(-2 + 1.5 * z1)))
    b = 1 / (1 + np.exp(-(6 * (0.8 * z2 + 0.7 * z1) + 1)))
    return y, {"a": a, "b": b}


def test_stacking_does_not_collapse_onto_the_calibrated_member_when_the_other_adds_information():
    y, members = _calibrated_and_miscalibrated()
    grid = fit_weights(members, y)
    stacked = fit_weights(members, y, method="stacking")
    assert grid.weight("b") <= 0.1  # the grid's log-loss punishes b's scale
    assert 0.2 < stacked.weight("b") < 0.5
    assert sum(stacked.weights) == pytest.approx(1.0)
    assert roc_auc_score(y, combine(members, stacked)) > roc_auc_score(y, combine(members, grid)) + 0.005
    assert stacked.fit_info["method"] == "stacking" and stacked.fit_info["converged"]
    assert set(stacked.fit_info["coefficients"]) == {"a", "b"}
    # out of sample too: fitted on one draw, scored on another
    y2, fresh = _calibrated_and_miscalibrated(seed=1)
    assert roc_auc_score(y2, combine(fresh, stacked)) > roc_auc_score(y2, combine(fresh, grid))


def test_stacking_gives_a_useless_member_no_weight_and_checks_its_method():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 3000).astype(float)
    good = np.clip(0.5 * y + rng.uniform(0, 0.5, y.size), 0, 1)
    noise = rng.uniform(0.01, 0.99, y.size)
    stacked = fit_weights({"good": good, "noise": noise}, y, method="stacking")
    assert stacked.weight("noise") < 0.05
    with pytest.raises(ValueError, match="Unknown method 'stack'; expected one of grid, stacking"):
        fit_weights({"good": good, "noise": noise}, y, method="stack")
