"""The one engine: loss-term composition, auxiliary sources, plug-ins, local rounds, resume with loss terms."""

import numpy as np
import pytest
import torch
from torch import nn

from healthfusion.features.dataset import ArrayDataset
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.callbacks import Checkpoint
from healthfusion.training.losses import LossTerm, get_loss_term
from healthfusion.training.losses.dann import DANNLoss
from healthfusion.training.losses.mmd import MMDLoss
from healthfusion.training.losses.supervised import SupervisedLoss
from healthfusion.training.plugins import TrainingParts, TrainingPlugin
from healthfusion.training.sampling import EpochLoader, SourceSampler


class Encoded(nn.Module):
    """Encoder + risk head + domain classifier on ``static`` (the TransferModel interface, tiny)."""

    def __init__(self, n_in=4):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(n_in, 8), nn.ReLU())
        self.head = nn.Linear(8, 1)
        self.domain = nn.Linear(8, 1)

    def encode(self, batch):
        return self.enc(batch["static"])

    def forward(self, batch):
        return {"logits": self.head(self.encode(batch)).squeeze(-1)}

    def domain_logits(self, z, strength):
        from healthfusion.models.transfer import reverse_gradient

        return self.domain(reverse_gradient(z, strength)).squeeze(-1)


def _data(n, shift, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32) + shift
    y = (x[:, 0] - shift + rng.normal(scale=0.5, size=n) > 0).astype(np.float32)
    return ArrayDataset({"static": x, "target": y})


SRC, TGT = _data(200, 0.0, 0), _data(120, 2.0, 1)


def _transfer(seed=0, epochs=3, **kw):
    torch.manual_seed(0)
    model = Encoded()
    trainer = Trainer(TrainerConfig(max_epochs=epochs, batch_size=32, seed=seed, patience=None, **kw),
                      loss=[SupervisedLoss("binary"), MMDLoss(1.0), DANNLoss(1.0)])
    history = trainer.fit(model, SRC, TGT[:40], sources={"source": SRC, "target": TGT})
    return model, history, trainer


def test_composed_terms_log_their_metrics_and_are_deterministic():
    a, ha, _ = _transfer()
    b, hb, _ = _transfer()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert set(ha.metrics) >= {"mmd", "domain_accuracy", "dann_strength"}
    assert all(0.0 <= v <= 1.0 for v in ha.metrics["domain_accuracy"])
    strengths = ha.metrics["dann_strength"]
    assert strengths[0] < strengths[-1]  # the reversal ramps up over training
    c, _, _ = _transfer(seed=1)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_missing_source_and_model_without_encode_are_explained(tiny_net, planted):
    with pytest.raises(ValueError, match="sources="):
        Trainer(TrainerConfig(max_epochs=1), loss=[SupervisedLoss(), MMDLoss()]).fit(Encoded(5), planted(40))
    with pytest.raises(ValueError, match="encode"):
        Trainer(TrainerConfig(max_epochs=1), loss=[SupervisedLoss(), MMDLoss()]).fit(
            tiny_net(5), planted(40), sources={"source": planted(20), "target": planted(20)})
    with pytest.raises(ValueError, match="Did you mean 'mmd'"):
        get_loss_term("mdd")


def test_source_sampler_covers_every_row_before_repeating():
    rng = np.random.default_rng(0)
    data = ArrayDataset({"static": np.arange(10, dtype=np.float32)[:, None], "target": np.zeros(10, np.float32)})
    sampler = SourceSampler({"a": data}, 4, rng)
    first = np.concatenate([sampler.draw()["a"]["static"][:, 0].numpy() for _ in range(2)])
    assert "target" not in sampler.draw()["a"]
    assert len(set(first.tolist())) == 8  # no row twice within one pass


def test_custom_term_with_parameters_is_optimised(tiny_net, planted):
    class Scaled(LossTerm):
        name = "scaled"

        def __init__(self):
            super().__init__()
            self.log_scale = nn.Parameter(torch.zeros(()))

        def compute(self, model, batch, state):
            logits = model({"static": batch["static"]})["logits"]
            loss = nn.functional.binary_cross_entropy_with_logits(logits, batch["target"])
            return {"loss": torch.exp(-self.log_scale) * loss + self.log_scale, "scale": self.log_scale.detach()}

    term = Scaled()
    history = Trainer(TrainerConfig(max_epochs=3, lr=0.05), loss=term).fit(tiny_net(5), planted(120))
    assert term.log_scale.item() != 0.0 and len(history.metrics["scale"]) == 3


def test_plugin_wraps_model_optimizer_and_loader(tiny_net, planted):
    seen = {}

    class Wrap(TrainingPlugin):
        def wrap(self, parts, trainer):
            seen["loader"] = parts.loader
            return TrainingParts(parts.model, parts.optimizer, parts.loader.to_torch())

        def on_fit_end(self, trainer):
            seen["end"] = trainer.step

    data = planted(100)
    torch.manual_seed(0)
    history = Trainer(TrainerConfig(max_epochs=2, batch_size=32), plugins=[Wrap()]).fit(tiny_net(5), data)
    assert isinstance(seen["loader"], EpochLoader)
    assert seen["end"] == 2 * 4 and len(history) == 2
    torch.manual_seed(0)
    plain = Trainer(TrainerConfig(max_epochs=2, batch_size=32)).fit(tiny_net(5), data)
    assert history.train_loss == pytest.approx(plain.train_loss)  # the torch loader draws the same batches


def test_local_round_runs_given_steps_from_given_weights(tiny_net, planted):
    model = tiny_net(5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(TrainerConfig(max_epochs=5, batch_size=16))
    out = trainer.local_round(model, planted(100), start, steps=3, seed=7)
    assert out["steps"] == 3 and out["n_samples"] == 100
    assert not torch.equal(out["weights"]["net.0.weight"], start["net.0.weight"])
    again = trainer.local_round(tiny_net(5), planted(100), start, steps=3, seed=7)
    assert torch.equal(again["weights"]["net.0.weight"], out["weights"]["net.0.weight"])
    assert trainer.config.max_steps is None  # the round's settings do not stick


def test_resume_with_alignment_terms_equals_an_uninterrupted_run(tmp_path):
    terms = lambda: [SupervisedLoss("binary"), MMDLoss(1.0), DANNLoss(1.0)]  # noqa: E731
    cfg = TrainerConfig(max_epochs=4, batch_size=32, seed=0, patience=None)
    sources = {"source": SRC, "target": TGT}
    torch.manual_seed(0)
    full = Encoded()
    Trainer(cfg, [Checkpoint(tmp_path)], loss=terms()).fit(full, SRC, TGT[:40], sources=sources)
    torch.manual_seed(1)
    resumed = Encoded()
    trainer = Trainer(cfg, [Checkpoint(tmp_path / "again")], loss=terms()).resume_from(tmp_path / "epoch_0001.pt")
    history = trainer.fit(resumed, SRC, TGT[:40], sources=sources)
    assert len(history) == 4 and len(history.metrics["mmd"]) == 4
    for pa, pb in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
