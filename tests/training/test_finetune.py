"""Fine-tuning strategies: a linear probe leaves the encoder untouched, gradual unfreezing goes top-down,
discriminative learning rates decay with depth, 'full' equals plain training."""

import numpy as np
import pytest
import torch

from healthfusion.features.dataset import ArrayDataset
from healthfusion.models import HybridConfig, HybridModel
from healthfusion.models.encoders import CNNEncoderConfig, LSTMEncoderConfig, MLPEncoderConfig
from healthfusion.training import Trainer
from healthfusion.training.callbacks import Callback
from healthfusion.training.config import TrainerConfig
from healthfusion.training.finetune import FinetuneConfig, FineTuner


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 6, 3)).astype(np.float32)
    y = (values[:, :, 0].mean(1) + rng.normal(scale=0.3, size=n) > 0).astype(np.float32)
    return ArrayDataset({
        "ts_values": values, "ts_mask": np.ones_like(values), "ts_delta": np.zeros_like(values),
        "ts_lengths": np.full(n, 6, dtype=np.int64), "static": rng.normal(size=(n, 4)).astype(np.float32),
        "image": rng.normal(size=(n, 1, 8, 8)).astype(np.float32), "target": y,
    })


def _model(seed=0):
    torch.manual_seed(seed)
    return HybridModel(HybridConfig(
        ts=LSTMEncoderConfig(n_variables=3, hidden_size=6, attention_dim=4, num_layers=2),
        static=MLPEncoderConfig(in_dim=4, hidden_sizes=(6,)),
        image=CNNEncoderConfig(in_channels=1, image_size=8, channels=(4,), out_dim=6, dropout=0.2),
        fc_hidden=(8,), dropout=0.2,
    ))


def _fit(model, finetune, epochs=3, **kw):
    cfg = TrainerConfig(max_epochs=epochs, batch_size=16, lr=1e-2, patience=None, finetune=finetune, **kw)
    trainer = Trainer(cfg)
    trainer.fit(model, _data())
    return trainer


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_linear_probe_leaves_the_encoders_untouched():
    model = _model()
    before = _snapshot(model.encoders)
    head_before = model.head.linear.weight.detach().clone()
    _fit(model, FinetuneConfig(strategy="linear_probe"))
    after = model.encoders.state_dict()
    for name, value in before.items():  # weights and batch-norm buffers alike
        assert torch.equal(value, after[name]), name
    assert not torch.equal(head_before, model.head.linear.weight)
    assert all(p.requires_grad for p in model.parameters())  # restored after the fit


def test_linear_probe_of_one_encoder_trains_the_others():
    model = _model()
    ts_before, static_before = _snapshot(model.encoders["ts"]), _snapshot(model.encoders["static"])
    _fit(model, {"strategy": "linear_probe", "modules": ["encoders.ts"]})
    assert all(torch.equal(v, model.encoders["ts"].state_dict()[k]) for k, v in ts_before.items())
    assert not all(torch.equal(v, model.encoders["static"].state_dict()[k]) for k, v in static_before.items())


class _Record(Callback):
    def __init__(self):
        self.states = []

    def on_epoch_end(self, trainer):
        self.states.append(_snapshot(trainer.model))


def test_gradual_unfreezing_goes_from_the_top_down():
    model = _model()
    tuner = FineTuner(model, FinetuneConfig(strategy="gradual_unfreeze", modules=("encoders.ts",)))
    depth = tuner.depth
    # LSTM layers count as separate blocks; attention on top of them
    assert depth["encoders.ts.attn_score.weight"] == 1
    assert depth["encoders.ts.lstm.weight_ih_l1"] == 3 and depth["encoders.ts.lstm.weight_ih_l0"] == 4
    assert depth["head.linear.weight"] == 0 and depth["encoders.static.layers.0.weight"] == 0
    start = _snapshot(model)
    rec = _Record()
    cfg = TrainerConfig(max_epochs=3, batch_size=16, lr=1e-2, patience=None,
                        finetune=FinetuneConfig(strategy="gradual_unfreeze", modules=("encoders.ts",)))
    Trainer(cfg, callbacks=[rec]).fit(model, _data())
    prev = start
    for epoch, state in enumerate(rec.states):
        for name, d in depth.items():
            if d == 0:  # the top (some of it, e.g. missing-modality embeddings, gets no gradient here)
                continue
            changed = not torch.equal(prev[name], state[name])
            assert changed == (d <= epoch), (epoch, name, d)
        prev = state


def test_discriminative_learning_rates():
    model = _model()
    trainer = _fit(model, FinetuneConfig(strategy="discriminative", lr_decay=0.5), epochs=1)
    groups = trainer.optimizer.param_groups
    assert [g["depth"] for g in groups] == sorted(g["depth"] for g in groups)
    for g in groups:
        assert g["lr"] == pytest.approx(1e-2 * 0.5 ** g["depth"])
    trainer = _fit(_model(), FinetuneConfig(strategy="discriminative", lr_decay=0.5), epochs=2, lr_schedule="cosine")
    for g in trainer.optimizer.param_groups:  # epoch 1 of 2 under cosine: lr / 2, times the group's scale
        assert g["lr"] == pytest.approx(1e-2 * 0.5 * 0.5 ** g["depth"])


def test_full_equals_plain_training():
    a, b = _model(), _model()
    _fit(a, None)
    _fit(b, FinetuneConfig(strategy="full"))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_unknown_module_is_named():
    with pytest.raises(ValueError, match="'encoders.codes'"):
        _fit(_model(), FinetuneConfig(strategy="linear_probe", modules=("encoders.codes",)))
    with pytest.raises(ValueError):
        FinetuneConfig(strategy="freeze")
