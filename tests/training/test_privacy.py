"""DP-SGD through the Trainer: the reported epsilon is Opacus's accountant's, clipping is applied, LSTMs swap."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from healthfusion.features.dataset import ArrayDataset
from healthfusion.training import Callback, Trainer, TrainerConfig

pytest.importorskip("opacus")
from opacus.accountants import RDPAccountant  # noqa: E402

from healthfusion.training.privacy import DPSGD, PrivacyConfig, copy_to_plain, make_private_model  # noqa: E402


class Logistic(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, batch):
        return {"logits": self.linear(batch["static"]).squeeze(-1)}


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.out = nn.Linear(6, 1)

    def forward(self, batch):
        h, _ = self.lstm(batch["static"].unsqueeze(1).repeat(1, 3, 1))
        return {"logits": self.out(h[:, -1]).squeeze(-1)}


class GradProbe(Callback):
    """Records the global norm of the gradient the optimiser stepped with."""

    def __init__(self):
        self.norms = []

    def on_batch_end(self, trainer, batch_index):
        grads = [p.grad.detach().flatten() for p in trainer.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))


def data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return ArrayDataset({"static": x, "target": (x[:, 0] > 0).astype(np.float32)})


def test_reported_epsilon_equals_opacus_accountant():
    train = data()
    cfg = TrainerConfig(max_epochs=3, batch_size=20, lr=0.05)
    dp = DPSGD(PrivacyConfig(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5), len(train), 20, 3)
    torch.manual_seed(0)
    Trainer(cfg, plugins=[dp]).fit(Logistic(), train)
    report = dp.report()
    assert report["steps"] == 3 * math.ceil(100 / 20)
    reference = RDPAccountant()
    for _ in range(report["steps"]):
        reference.step(noise_multiplier=1.1, sample_rate=0.2)
    assert report["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    assert 0 < report["epsilon"] < 100


def test_target_epsilon_is_met_and_clipping_is_applied():
    train = data()
    dp = DPSGD(PrivacyConfig(target_epsilon=3.0), len(train), 20, 2)
    torch.manual_seed(0)
    model = Logistic()
    Trainer(TrainerConfig(max_epochs=2, batch_size=20), plugins=[dp]).fit(model, train)
    assert dp.report()["epsilon"] == pytest.approx(3.0, abs=0.05)
    assert dp.delta == 1e-5
    assert not hasattr(model, "_module") and all(not hasattr(p, "grad_sample") or p.grad_sample is None
                                                 for p in model.parameters())
    # each sample's gradient is clipped to max_grad_norm before the (tiny) noise: the batch gradient is bounded
    norms = {}
    for clip in (None, 1e-3):
        torch.manual_seed(0)
        probe = GradProbe()
        plugins = [] if clip is None else [DPSGD(PrivacyConfig(noise_multiplier=1e-4, max_grad_norm=clip), 100, 20, 1)]
        Trainer(TrainerConfig(max_epochs=1, batch_size=20), callbacks=[probe], plugins=plugins).fit(Logistic(), train)
        norms[clip] = max(probe.norms)
    assert norms[1e-3] <= 1.01e-3 < 0.01 <= norms[None]


def test_lstm_becomes_dplstm_with_interchangeable_weights():
    torch.manual_seed(0)
    plain = Recurrent()
    private = make_private_model(Recurrent())
    assert type(private.lstm).__name__ == "DPLSTM"
    assert set(plain.state_dict()) <= set(private.state_dict())  # DPLSTM keeps nn.LSTM's names (+ aliases)
    private.load_state_dict(plain.state_dict(), strict=False)
    batch = data(8).batch()
    with torch.no_grad():
        np.testing.assert_allclose(private(batch)["logits"], plain(batch)["logits"], atol=1e-6)
    dp = DPSGD(PrivacyConfig(noise_multiplier=1.0), 100, 20, 1)
    Trainer(TrainerConfig(max_epochs=1, batch_size=20), plugins=[dp]).fit(private, data())
    copy_to_plain(private, plain)  # DP-trained weights load into the plain LSTM
    with torch.no_grad():
        np.testing.assert_allclose(private(batch)["logits"], plain(batch)["logits"], atol=1e-6)
    assert dp.report()["steps"] == 5


def test_privacy_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="exactly one of target_epsilon"):
        PrivacyConfig()
    with pytest.raises(ValueError, match="Remove grad_clip"):
        dp = DPSGD(PrivacyConfig(noise_multiplier=1.0), 100, 20, 1)
        Trainer(TrainerConfig(max_epochs=1, batch_size=20, grad_clip=1.0), plugins=[dp]).fit(Logistic(), data())
