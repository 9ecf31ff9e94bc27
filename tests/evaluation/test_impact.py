"""Decision-curve net benefit against a direct confusion-matrix computation; the what-if calculator's arithmetic."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from healthfusion.evaluation.impact import decision_curve, net_benefit, what_if


def test_net_benefit_matches_confusion_matrix():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    for t in (0.1, 0.3, 0.6):
        tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int)).ravel()
        assert net_benefit(y, p, t) == pytest.approx(tp / 200 - fp / 200 * t / (1 - t))
    curve = decision_curve(y, p, thresholds=[0.2, 0.5])
    prev = y.mean()
    np.testing.assert_allclose(curve["net_benefit_all"], [prev - (1 - prev) * 0.25, prev - (1 - prev)])
    assert (curve["net_benefit_none"] == 0).all()
    # at a threshold below every score the model flags everyone: it equals "treat all"
    low = decision_curve(y, np.maximum(p, 0.05), thresholds=[0.04])
    assert low.loc[0, "net_benefit_model"] == pytest.approx(low.loc[0, "net_benefit_all"])


def test_what_if_arithmetic_and_assumptions():
    y = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    r = what_if(y, p, threshold=0.5, effectiveness=0.25, intervention_cost=200, event_cost=10_000, currency="EUR")
    assert (r.flagged, r.events_flagged) == (4, 2)
    assert r.events_avoided == pytest.approx(0.5)
    assert r.net_cost == pytest.approx(4 * 200 - 0.5 * 10_000)
    assert r.number_needed_to_treat == pytest.approx(8)
    assert r.per_1000()["flagged"] == pytest.approx(400)
    assert any("25%" in a for a in r.assumptions) and any("EUR" in a for a in r.assumptions)


def test_what_if_rejects_bad_assumptions():
    with pytest.raises(ValueError, match="effectiveness"):
        what_if([0, 1], [0.2, 0.8], threshold=0.5, effectiveness=1.5, intervention_cost=1, event_cost=1)
    with pytest.raises(ValueError, match="Costs"):
        what_if([0, 1], [0.2, 0.8], threshold=0.5, effectiveness=0.5, intervention_cost=-1, event_cost=1)
