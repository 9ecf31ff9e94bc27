"""Subgroup metrics and gaps against Fairlearn and scikit-learn on small cases; the mitigation's effect."""

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, equalized_odds_difference, false_positive_rate
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from healthfusion.evaluation.fairness import fairness_gaps, group_metrics, group_thresholds


@pytest.fixture
def biased():
    """Group B's scores are shifted down: same outcomes, lower predicted risk (fewer flagged)."""
    rng = np.random.default_rng(1)
    n = 600
    group = rng.choice(["A", "B"], n)
    y = (rng.uniform(size=n) < 0.3).astype(float)
    score = 1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(0, 1, n) - 1.2 * (group == "B"))))
    site = np.where(np.arange(n) < 6, "tiny", "big")
    return y, score, pd.DataFrame({"grp": group, "site": site})


def test_group_metrics_match_fairlearn_metricframe(biased):
    y, p, groups = biased
    table = group_metrics(y, p, groups, threshold=0.4, n_boot=50)
    decisions = (p >= 0.4).astype(int)
    frame = MetricFrame(metrics={"tpr": recall_score, "ppv": precision_score, "fpr": false_positive_rate},
                        y_true=y.astype(int), y_pred=decisions, sensitive_features=groups["grp"])
    ours = table[table["attribute"] == "grp"].set_index("group")
    for metric in ("tpr", "ppv", "fpr"):
        np.testing.assert_allclose(ours[metric].to_numpy(), frame.by_group[metric].to_numpy())
    for g in ("A", "B"):
        mask = groups["grp"].to_numpy() == g
        assert ours.loc[g, "auroc"] == pytest.approx(roc_auc_score(y[mask], p[mask]))
        assert ours.loc[g, "n"] == mask.sum()
        assert ours.loc[g, "auroc_ci_low"] <= ours.loc[g, "auroc"] <= ours.loc[g, "auroc_ci_high"]
        assert ours.loc[g, "calibration_gap"] == pytest.approx(y[mask].mean() - p[mask].mean())


def test_small_groups_flagged_and_left_out_of_gaps(biased):
    y, p, groups = biased
    table = group_metrics(y, p, groups, n_boot=20)
    tiny = table[(table["attribute"] == "site") & (table["group"] == "tiny")]
    assert len(tiny) == 1 and bool(tiny["small_group"].iloc[0]) and int(tiny["n"].iloc[0]) == 6
    gaps = fairness_gaps(y, p, groups, threshold=0.4).set_index("attribute")
    assert "tiny (n<10)" in gaps.loc["site", "excluded"] and "n=6" not in gaps.loc["site", "excluded"]
    assert gaps.loc["site", "n_groups"] == 1 and np.isnan(gaps.loc["site", "equalized_odds_difference"])
    expected = equalized_odds_difference(y.astype(int), (p >= 0.4).astype(int), sensitive_features=groups["grp"])
    assert gaps.loc["grp", "equalized_odds_difference"] == pytest.approx(expected)


def test_group_thresholds_reduce_the_equalised_odds_gap(biased):
    y, p, groups = biased
    g = groups["grp"].to_numpy()
    val, test = slice(0, 300), slice(300, None)
    decisions, effect = group_thresholds(y[val], p[val], g[val], y[test], p[test], g[test], threshold=0.4)
    assert set(np.unique(decisions)) <= {0, 1} and decisions.size == 300
    assert effect.loc["equalized_odds_difference", "after"] < effect.loc["equalized_odds_difference", "before"]
    assert list(effect.columns) == ["before", "after"]


def test_group_rows_must_match():
    with pytest.raises(ValueError, match="groups has 2 rows but y_true has 3"):
        group_metrics([0, 1, 0], [0.1, 0.8, 0.3], pd.DataFrame({"sex": ["F", "M"]}))


def test_a_group_with_one_event_does_not_drive_the_gaps():
    """A large group with a single event (its AUROC is meaningless) is flagged small and left out of the gaps and of
    the AUROC range, however far its AUROC is from the others'."""
    rng = np.random.default_rng(3)
    n = 400
    group = np.array(["old"] * 200 + ["young"] * 200)
    y = (rng.uniform(size=n) < 0.3).astype(float)
    y[200:] = 0.0
    y[200] = 1.0  # one event among the young
    p = np.clip(0.3 + 0.4 * (y - 0.3) + rng.normal(0, 0.1, n), 0.01, 0.99)
    p[200] = 0.02  # that event gets the lowest risk: AUROC near 0 in the young
    groups = pd.DataFrame({"age": group, "sex": rng.choice(["F", "M"], n)})
    table = group_metrics(y, p, groups, n_boot=20).set_index(["attribute", "group"])
    assert bool(table.loc[("age", "young"), "small_group"]) and table.loc[("age", "young"), "auroc"] < 0.1
    assert not bool(table.loc[("age", "old"), "small_group"])
    gaps = fairness_gaps(y, p, groups, threshold=0.4).set_index("attribute")
    assert gaps.loc["age", "n_groups"] == 1 and np.isnan(gaps.loc["age", "auroc_range"])
    assert gaps.loc["age", "excluded"] == "young (n=200)"
    assert gaps.loc["sex", "n_groups"] == 2 and not np.isnan(gaps.loc["sex", "auroc_range"])


def test_mitigation_picks_its_attribute_on_validation_stays_not_test(tmp_path):
    """The attribute to mitigate is the one with the largest equalised-odds gap among the validation stays; here the
    test stays show their largest gap on another attribute, which must not decide."""
    from healthfusion.workflows.audit import _mitigate

    rng = np.random.default_rng(0)
    n = 400
    i = np.arange(n)
    sex, site = np.where(i % 2 == 0, "M", "F"), np.where((i // 2) % 2 == 0, "A", "B")
    y = rng.integers(0, 2, n)

    def scores(good):  # informative scores where ``good``, noise elsewhere
        return np.where(good, np.clip(0.1 + 0.8 * y + rng.normal(0, 0.05, n), 0, 1), rng.uniform(0, 1, n))

    frames, domains = [], []
    for split, good in (("val", sex == "M"), ("test", site == "A")):
        ids = [f"{split}{k}" for k in i]
        frames.append(pd.DataFrame({"stay_id": ids, "split": split, "y_true": y, "hybrid": scores(good)}))
        domains.append(pd.DataFrame({"stay_id": ids, "split": split, "sex": sex, "site": site}))
    result = _mitigate(pd.concat(frames), pd.concat(domains), ["sex", "site"], "hybrid", 0.5, 0, tmp_path)
    assert result.get("mitigation_attribute") == "sex", result


def test_group_metrics_report_calibration_beside_auroc(biased):
    """Each group's ECE, calibration slope and intercept are those of the group's own stays, with CIs."""
    from healthfusion.evaluation.calibration import calibration_slope_intercept, expected_calibration_error

    y, p, groups = biased
    table = group_metrics(y, p, groups, n_boot=50).set_index(["attribute", "group"])
    for g in ("A", "B"):
        mask = groups["grp"].to_numpy() == g
        row = table.loc[("grp", g)]
        assert row["ece"] == pytest.approx(expected_calibration_error(y[mask], p[mask]))
        fit = calibration_slope_intercept(y[mask], p[mask])
        assert row["cal_slope"] == pytest.approx(fit["slope"], rel=1e-5)
        assert row["cal_intercept"] == pytest.approx(fit["intercept"], rel=1e-5)
        assert row["ece_ci_low"] <= row["ece"] <= row["ece_ci_high"]
    # group B's risks are shifted down: it is the worse calibrated, and underestimated (intercept > 0)
    assert table.loc[("grp", "B"), "cal_intercept"] > table.loc[("grp", "A"), "cal_intercept"]


def test_a_group_without_ten_non_events_does_not_drive_the_auroc_spread():
    """A group whose AUROC rests on fewer than 10 non-events (or events) is listed as excluded, not compared."""
    from healthfusion.evaluation.robustness import domain_spread

    rng = np.random.default_rng(5)
    sizes = {"a": 300, "b": 300, "sick": 40}
    group = np.repeat(list(sizes), list(sizes.values()))
    y = (rng.uniform(size=group.size) < 0.3).astype(float)
    y[group == "sick"] = 1.0
    y[np.flatnonzero(group == "sick")[:4]] = 0.0  # 36 events, 4 non-events: AUROC estimable, not comparable
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.15, group.size), 0.01, 0.99)
    p[np.flatnonzero(group == "sick")[:4]] = 0.99  # its 4 non-events ranked highest: AUROC 0 in that group
    _, spread = domain_spread(y, p, pd.DataFrame({"unit": group}), n_boot=20)
    row = spread.iloc[0]
    assert row["n_groups"] == 2 and "sick (n=40)" in row["excluded"]
    assert {row["worst_group"], row["best_group"]} == {"a", "b"} and row["auroc_range"] < 0.2
