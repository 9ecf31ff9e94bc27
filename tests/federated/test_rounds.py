"""Sites, strategies and the in-process rounds: learning, failures, min_sites, resume, FedProx, personalisation."""

import numpy as np
import pytest
import torch

from healthfusion.federated.client import Site, get_weights, set_weights
from healthfusion.federated.server import FederatedConfig, run_rounds
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.losses import StepState
from healthfusion.training.losses.proximal import ProximalLoss

from .helpers import TinyLogistic

LOCAL = TrainerConfig(max_epochs=1, batch_size=16, lr=0.05, progress=False)


def mean_accuracy(result, model="global"):
    last = max(m["round"] for m in result.site_metrics)
    return np.mean([m["accuracy"] for m in result.site_metrics if m["round"] == last and m["model"] == model])


def test_fedavg_learns_and_records_participation(tiny_sites, tiny_model):
    before = np.mean([s.evaluate(tiny_model)["accuracy"] for s in tiny_sites])
    result = run_rounds(tiny_model, tiny_sites, FederatedConfig(rounds=4), LOCAL)
    assert mean_accuracy(result) > max(before, 0.8)
    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4]
    assert all(r["sites"] == ["a", "b", "c"] and r["failed"] == {} and r["n_samples"] == 130 for r in result.rounds)
    np.testing.assert_allclose(get_weights(tiny_model)[0], result.weights[0])


class CrashingSite(Site):
    def fit(self, *args, round_=0, **kwargs):
        if round_ == 2:
            raise RuntimeError("connection to the site's database lost")
        return super().fit(*args, round_=round_, **kwargs)


def test_a_failing_site_does_not_stop_the_round(tiny_sites, tiny_model):
    a = tiny_sites[0]
    sites = [CrashingSite(a.name, a.train, a.test), *tiny_sites[1:]]
    result = run_rounds(tiny_model, sites, FederatedConfig(rounds=3, min_sites=2), LOCAL)
    r2 = result.rounds[1]
    assert r2["sites"] == ["b", "c"] and "connection to the site's database lost" in r2["failed"]["a"]
    assert r2["aggregated"] and r2["n_samples"] == 70
    assert result.rounds[2]["sites"] == ["a", "b", "c"]


def test_too_few_sites_keep_the_global_weights(tiny_sites, tiny_model):
    a = tiny_sites[0]
    sites = [CrashingSite(a.name, a.train, a.test), tiny_sites[1]]
    result = run_rounds(tiny_model, sites, FederatedConfig(rounds=2, min_sites=2), LOCAL, evaluate_every=0)
    assert not result.rounds[1]["aggregated"]
    with pytest.raises(ValueError, match="min_sites is 3"):
        run_rounds(tiny_model, sites, FederatedConfig(rounds=1, min_sites=3), LOCAL)


def fresh():
    torch.manual_seed(0)
    return TinyLogistic()


def test_restarted_server_resumes_from_last_round(tiny_sites, tmp_path):
    cfg = FederatedConfig(rounds=3, server_optimizer="adam", server_lr=0.05)
    full = run_rounds(fresh(), tiny_sites, cfg, LOCAL, evaluate_every=0)
    first = run_rounds(fresh(), tiny_sites, cfg.model_copy(update={"rounds": 2}), LOCAL,
                       state_dir=tmp_path, evaluate_every=0)
    assert len(first.rounds) == 2
    resumed = run_rounds(fresh(), tiny_sites, cfg, LOCAL, state_dir=tmp_path, evaluate_every=0)
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]
    for w_full, w_res in zip(full.weights, resumed.weights, strict=True):
        np.testing.assert_allclose(w_full, w_res, rtol=1e-6, atol=1e-7)


def test_proximal_term_keeps_local_weights_near_global(tiny_sites):
    site = tiny_sites[1]
    start = get_weights(TinyLogistic())
    drift = {}
    for mu in (0.0, 10.0):
        model = TinyLogistic()
        new, _, _ = site.fit(model, start, LOCAL.model_copy(update={"max_epochs": 3}), proximal_mu=mu)
        drift[mu] = sum(np.sum((a - b) ** 2) for a, b in zip(new, start, strict=True))
    assert drift[10.0] < 0.5 * drift[0.0]
    with pytest.raises(ValueError, match="cannot be combined"):
        site.fit(TinyLogistic(), start, LOCAL, proximal_mu=0.1, privacy=object())


def test_proximal_loss_is_half_mu_squared_distance_to_the_start():
    model = TinyLogistic()
    term = ProximalLoss(mu=0.5)
    term.setup(model, None, StepState())
    with torch.no_grad():
        model.linear.weight += torch.tensor([[1.0, 2.0, 0.0]])
        model.linear.bias -= 2.0
    out = term.compute(model, {}, StepState())
    assert float(out["loss"]) == pytest.approx(0.5 * 0.5 * (1 + 4 + 4))
    assert float(out["proximal_distance"]) == pytest.approx(9.0)
    out["loss"].backward()
    np.testing.assert_allclose(model.linear.weight.grad.numpy(), [[0.5, 1.0, 0.0]])
    with pytest.raises(ValueError, match="mu must be >= 0"):
        ProximalLoss(-1.0)


def test_personalised_and_robust_strategies(tiny_sites, tiny_model):
    cfg = FederatedConfig(rounds=2, aggregation="trimmed_mean", trim_beta=0.34, personalize_epochs=2)
    result = run_rounds(tiny_model, tiny_sites, cfg, LOCAL)
    assert set(result.personalised) == {"a", "b", "c"}
    assert not np.allclose(result.personalised["a"][0], result.weights[0])
    assert {m["model"] for m in result.site_metrics} == {"global", "personalised"}
    with pytest.raises(ValueError, match="server_optimizer 'adam' steps on the FedAvg aggregate"):
        FederatedConfig(aggregation="median", server_optimizer="adam")


def test_weights_from_another_architecture_are_named():
    with pytest.raises(ValueError, match="'linear.weight' has shape"):
        set_weights(TinyLogistic(3), get_weights(TinyLogistic(4)))
    with pytest.raises(ValueError, match="another model architecture"):
        set_weights(TinyLogistic(3), get_weights(TinyLogistic(3))[:1])
    # the trainer and the site score the same model the same way
    site_model = TinyLogistic()
    p = Trainer(LOCAL).predict(site_model, Site("x", *[_ds() for _ in range(2)]).test, head_kind="binary")
    assert p.shape == (8,)


def _ds():
    from healthfusion.features.dataset import ArrayDataset

    rng = np.random.default_rng(0)
    return ArrayDataset({"static": rng.normal(size=(8, 3)).astype(np.float32),
                         "target": (rng.random(8) > 0.5).astype(np.float32)})


def test_per_site_dp_reports_each_sites_budget(tiny_sites, tiny_model):
    pytest.importorskip("opacus")
    from healthfusion.training.privacy import PrivacyConfig

    cfg = FederatedConfig(rounds=2, privacy=PrivacyConfig(target_epsilon=2.0, delta=1e-5))
    result = run_rounds(tiny_model, tiny_sites, cfg, LOCAL, evaluate_every=0)
    eps = [r["epsilon"] for r in result.rounds]
    assert set(eps[1]) == {"a", "b", "c"}
    for name in ("a", "b", "c"):
        assert 0 < eps[0][name] < eps[1][name]  # the site's accountant carries over rounds
        assert eps[1][name] == pytest.approx(2.0, abs=0.05)  # the budget covers the whole run
