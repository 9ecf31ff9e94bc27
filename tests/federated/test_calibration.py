"""Federated temperature: the weighted geometric mean of the sites' temperatures, sites without a usable
validation set send nothing, and the calibrator keeps accuracy at 0.5 and the ranking."""

import numpy as np
import pytest
import torch

from healthfusion.features.dataset import ArrayDataset
from healthfusion.federated.calibration import average_temperature, calibrate_federated, site_temperature
from healthfusion.federated.client import Site

from .helpers import TinyLogistic, make_site


def test_average_temperature_is_the_weighted_geometric_mean():
    assert average_temperature([2.0, 0.5], [1, 1]) == pytest.approx(1.0)
    assert average_temperature([2.0, 8.0], [3, 1]) == pytest.approx(np.exp((3 * np.log(2) + np.log(8)) / 4))
    assert average_temperature([1.7], [0 + 5]) == pytest.approx(1.7)
    with pytest.raises(ValueError, match="one count per temperature"):
        average_temperature([1.0, 2.0], [1])
    with pytest.raises(ValueError, match="positive and finite"):
        average_temperature([0.0], [1])
    with pytest.raises(ValueError, match="positive sum"):
        average_temperature([1.0], [0])


def test_calibrate_federated_uses_the_sites_that_can_fit_one():
    torch.manual_seed(0)
    model = TinyLogistic()
    with torch.no_grad():  # probabilities away from 0 and 1 (no clipping ties)
        model.linear.weight.mul_(0).add_(torch.tensor([[6.0, -4.0, 2.0]]))
    a, b = make_site("a", 80, 0.0, 1), make_site("b", 60, 0.5, 2)
    a.val, b.val = make_site("a", 80, 0.0, 11).train, make_site("b", 60, 0.5, 12).train
    rng = np.random.default_rng(3)
    one_outcome = ArrayDataset({"static": rng.normal(size=(10, 3)).astype(np.float32),
                                "target": np.ones(10, dtype=np.float32)})
    c = Site("c", a.train, a.test, one_outcome)
    d = Site("d", a.train, a.test)  # no validation stays
    calibrator, per_site = calibrate_federated(model, [a, b, c, d])
    assert per_site["c"] == {"temperature": None, "n_val": 0} and per_site["d"]["temperature"] is None
    t_a, n_a = site_temperature(model, a)
    t_b, n_b = site_temperature(model, b)
    assert t_a != pytest.approx(t_b) and (n_a, n_b) == (80, 60)
    assert calibrator.params_["temperature"] == pytest.approx(average_temperature([t_a, t_b], [n_a, n_b]))
    assert calibrator.n_fit_ == 140 and sorted(calibrator.info_["sites"]) == ["a", "b"]
    p = a.predict(model).astype(np.float64)
    p = p[(p > 1e-4) & (p < 1 - 1e-4)]  # the calibrator clips extreme probabilities (ties there)
    q = calibrator.transform(p)
    assert len(p) > 10 and np.array_equal(p >= 0.5, q >= 0.5) and np.array_equal(np.argsort(p), np.argsort(q))
    assert calibrate_federated(model, [c, d])[0] is None
