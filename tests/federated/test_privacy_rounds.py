"""Per-site DP-SGD across rounds: one Opacus wrapper and accountant per site and run, an epsilon equal to Opacus's
accountant for the whole run (also after a restart), and a fresh budget for every new run."""

import math
import sys

import numpy as np
import pytest
import torch

from healthfusion.federated.server import FederatedConfig, run_rounds
from healthfusion.training import TrainerConfig

from .helpers import TinyLogistic

pytest.importorskip("opacus")
from opacus.accountants import RDPAccountant  # noqa: E402

from healthfusion.training.privacy import PrivacyConfig, accountant_epsilon  # noqa: E402

LOCAL = TrainerConfig(max_epochs=1, batch_size=16, lr=0.05, progress=False)
NOISE = PrivacyConfig(noise_multiplier=1.3, max_grad_norm=1.0, delta=1e-5)


def fresh():
    torch.manual_seed(0)
    return TinyLogistic()


def opacus_epsilon(noise: float, rate: float, steps: int, delta: float = 1e-5) -> float:
    reference = RDPAccountant()
    for _ in range(steps):
        reference.step(noise_multiplier=noise, sample_rate=rate)
    return reference.get_epsilon(delta)


def test_accountant_epsilon_equals_opacus_for_mixed_histories():
    accountant = RDPAccountant()
    for noise, rate, steps in [(1.1, 0.2, 7), (0.8, 0.05, 3), (1.1, 0.2, 2)]:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    assert len(accountant.history) == 3
    assert accountant_epsilon(accountant, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    assert accountant_epsilon(RDPAccountant(), 1e-5) == 0.0


def test_each_site_wraps_once_and_its_epsilon_is_opacus_for_the_whole_run(tiny_sites):
    cfg = FederatedConfig(rounds=3, privacy=NOISE)
    result = run_rounds(fresh(), tiny_sites, cfg, LOCAL, evaluate_every=0)
    for site in tiny_sites:
        per_round = math.ceil(site.num_train / 16)
        assert [r["dp_steps"][site.name] for r in result.rounds] == [per_round] * 3
        expected = opacus_epsilon(1.3, 16 / site.num_train, 3 * per_round)
        assert result.rounds[-1]["epsilon"][site.name] == pytest.approx(expected, rel=1e-12)
        dp, private = site._privacy[1], site._privacy[2]
        # the wrapper built in round 1 is the one still on the site's private copy after round 3
        assert dp._wrapped is not None and dp._wrapped._module is private
    # the global model never carries Opacus's hooks: it is not the sites' private copy
    model = fresh()
    run_rounds(model, tiny_sites, cfg.model_copy(update={"rounds": 1}), LOCAL, evaluate_every=0)
    assert all(s._privacy[2] is not model for s in tiny_sites)
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_a_new_run_starts_a_new_budget_and_a_restart_keeps_the_spent_one(tiny_sites, tmp_path):
    cfg = FederatedConfig(rounds=2, privacy=NOISE)
    first = run_rounds(fresh(), tiny_sites, cfg, LOCAL, evaluate_every=0)
    again = run_rounds(fresh(), tiny_sites, cfg, LOCAL, evaluate_every=0)  # same Site objects, a new run
    assert again.rounds[-1]["epsilon"] == first.rounds[-1]["epsilon"]
    for a, b in zip(first.weights, again.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # a run stopped after round 1 and restarted from its state folder charges round 1's steps to the new accountants
    run_rounds(fresh(), tiny_sites, cfg.model_copy(update={"rounds": 1}), LOCAL, state_dir=tmp_path,
               evaluate_every=0)
    for site in tiny_sites:
        site.reset_privacy()  # as a new process would start
    resumed = run_rounds(fresh(), tiny_sites, cfg, LOCAL, state_dir=tmp_path, evaluate_every=0)
    assert [r["round"] for r in resumed.rounds] == [1, 2]
    for site in tiny_sites:
        expected = opacus_epsilon(1.3, 16 / site.num_train, 2 * math.ceil(site.num_train / 16))
        assert resumed.rounds[-1]["epsilon"][site.name] == pytest.approx(expected, rel=1e-12)



def test_missing_opacus_or_flower_names_the_extra_to_install(monkeypatch):
    from healthfusion.federated import flower
    from healthfusion.optional import MissingExtraError
    from healthfusion.training.privacy import DPSGD

    monkeypatch.setitem(sys.modules, "opacus", None)  # an import of a module set to None fails like a missing one
    with pytest.raises(MissingExtraError, match=r'Differential privacy needs the opacus package: pip install "healthfusion\[dp\]"'):
        DPSGD(NOISE, n_train=100, batch_size=10, epochs=1)
    monkeypatch.setitem(sys.modules, "flwr", None)
    with pytest.raises(MissingExtraError, match=r'pip install "healthfusion\[federated\]"'):
        flower._flwr()
