"""Pretraining on the one trainer (the PretrainingLoss term): learns planted structure without labels, is
deterministic, keeps the best epoch, resumes."""

import numpy as np
import pytest
import torch

from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.encoders import LSTMEncoderConfig, MLPEncoderConfig
from healthfusion.models.pretraining import PretrainingConfig, PretrainingModel
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.callbacks import Checkpoint
from healthfusion.training.losses.pretraining import PretrainingLoss
from healthfusion.workflows.pretrain import PRETRAIN_PRESET


def PretrainConfig(**kw):  # noqa: N802 - the pretrain workflow's defaults
    return TrainerConfig(**{**PRETRAIN_PRESET, **kw})


def pretrain(model, train, val=None, config=None, callbacks=()):
    return Trainer(config or PretrainConfig(), list(callbacks), loss=PretrainingLoss()).fit(model, train, val)


def coupled_series(n=160, t=8, seed=0):
    """Two variables that are always equal, observed together; a masked value is predictable from its twin."""
    rng = np.random.default_rng(seed)
    level = rng.normal(size=(n, 1, 1)) + 0.3 * rng.normal(size=(n, t, 1)).cumsum(axis=1)
    values = np.repeat(level, 2, axis=2).astype(np.float32)
    mask = np.ones_like(values)
    return ArrayDataset({"ts_values": values, "ts_mask": mask, "ts_delta": np.zeros_like(values),
                         "ts_lengths": np.full(n, t, dtype=np.int64), "target": np.full(n, np.nan, np.float32)})


def _model(seed=0):
    torch.manual_seed(seed)
    return PretrainingModel(PretrainingConfig(encoder=LSTMEncoderConfig(n_variables=2, hidden_size=8, attention_dim=8),
                                              mask_rate=0.3))


def test_learns_planted_structure_without_labels():
    train, val = coupled_series(), coupled_series(60, seed=1)
    model = _model()
    cfg = PretrainConfig(max_epochs=12, batch_size=32, lr=1e-2, patience=None)
    before = pretrain(_model(), train, val, cfg.model_copy(update={"max_epochs": 1, "lr": 1e-9})).val_loss[0]
    history = pretrain(model, train, val, cfg)
    assert len(history.train_loss) == 12
    assert min(history.val_loss) < 0.5 * before
    assert history.val_loss[history.best_epoch] == min(history.val_loss)


def test_deterministic_and_best_weights_kept():
    train, val = coupled_series(64), coupled_series(32, seed=1)
    cfg = PretrainConfig(max_epochs=3, batch_size=16, lr=5e-3)
    a, b = _model(), _model()
    ha, hb = pretrain(a, train, val, cfg), pretrain(b, train, val, cfg)
    assert ha.train_loss == hb.train_loss
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    # the kept weights give the best validation loss again
    again = pretrain(a, train, val, cfg.model_copy(update={"max_epochs": 1, "lr": 1e-12}))
    assert again.val_loss[0] == pytest.approx(min(ha.val_loss), rel=1e-4)


def test_bad_inputs():
    model = PretrainingModel(PretrainingConfig(encoder=MLPEncoderConfig(in_dim=3)))
    with pytest.raises(TypeError, match="PretrainingModel"):
        pretrain(torch.nn.Linear(2, 2), coupled_series(4))
    with pytest.raises(ValueError, match="at least 2"):
        pretrain(model, ArrayDataset({"static": np.zeros((1, 3), np.float32)}))
    with pytest.raises(ValueError):
        PretrainConfig(lr_schedule="linear")


def test_resume_equals_an_uninterrupted_run(tmp_path):
    train, val = coupled_series(64), coupled_series(32, seed=1)
    cfg = PretrainConfig(max_epochs=3, batch_size=16, lr=5e-3, patience=None)
    full = _model()
    pretrain(full, train, val, cfg, [Checkpoint(tmp_path)])
    resumed = _model(seed=3)
    trainer = Trainer(cfg, loss=PretrainingLoss()).resume_from(tmp_path / "epoch_0000.pt")
    trainer.fit(resumed, train, val)
    for (name, pa), pb in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
