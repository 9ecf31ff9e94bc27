"""Every registered model type trains on the one engine with its mode's loss terms: seeded runs are identical,
the trained model round-trips through its folder, and the same fits run on CUDA with mixed precision (skipped
without a GPU)."""

import numpy as np
import pytest
import torch

from healthfusion.features.dataset import ArrayDataset
from healthfusion.models import MODEL_REGISTRY
from healthfusion.models.base import load_network
from healthfusion.models.encoders import LSTMEncoderConfig, MLPEncoderConfig
from healthfusion.models.multitask import MultitaskModel, MultitaskModelConfig, TaskSpec
from healthfusion.models.pretraining import PretrainingConfig, PretrainingModel
from healthfusion.models.transfer import TransferModel, TransferModelConfig
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.losses.dann import DANNLoss
from healthfusion.training.losses.mmd import MMDLoss
from healthfusion.training.losses.multitask import MultitaskObjective
from healthfusion.training.losses.pretraining import PretrainingLoss
from healthfusion.training.losses.supervised import SupervisedLoss
from healthfusion.training.multitask import target_key
from tests.models.conftest import tiny_batch, tiny_hybrid_config

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _series(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    values = rng.normal(shift, 1.0, size=(n, 5, 3)).astype(np.float32)
    y = (values[:, :, 0].mean(axis=1) - shift > 0).astype(np.float32)
    return {"ts_values": values, "ts_mask": np.ones_like(values), "ts_delta": np.zeros_like(values),
            "ts_lengths": np.full(n, 5, dtype=np.int64), "static": values[:, 0, :], "target": y}


def _hybrid():
    parts = [tiny_batch(seed=s) for s in range(6)]
    arrays = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0] if k != "index"}
    arrays["target"] = (arrays["static"][:, 0] > 0).astype(np.float32)
    data = ArrayDataset(arrays)
    return MODEL_REGISTRY["hybrid"](tiny_hybrid_config("concat")), data[:24], data[24:], [SupervisedLoss()], None


def _transfer():
    src, tgt = ArrayDataset(_series(48, 0)), ArrayDataset(_series(32, 1, shift=1.0))
    model = TransferModel(TransferModelConfig(ts=LSTMEncoderConfig(n_variables=3, hidden_size=4), hidden=6))
    terms = [SupervisedLoss(class_weight=True), MMDLoss(1.0), DANNLoss(1.0)]
    return model, src, tgt[:16], terms, {"source": src, "target": tgt}


def _multitask():
    arrays = _series(48, 2)
    data = ArrayDataset({"static": arrays["static"], target_key("bin"): arrays["target"]})
    tasks = (TaskSpec(name="bin", kind="binary"), TaskSpec(name="clu", kind="clustering", n_outputs=2))
    model = MultitaskModel(MultitaskModelConfig(static=MLPEncoderConfig(in_dim=3, hidden_sizes=(4,)), tasks=tasks,
                                                fusion_dim=4, task_dim=4))
    return model, data[:32], data[32:], [MultitaskObjective()], None


def _pretraining():
    data = ArrayDataset({k: v for k, v in _series(40, 3).items() if k != "target"})
    model = PretrainingModel(PretrainingConfig(encoder=LSTMEncoderConfig(n_variables=3, hidden_size=4), mask_rate=0.3))
    return model, data[:32], data[32:], [PretrainingLoss()], None


MODES = {"hybrid": _hybrid, "transfer_bilstm": _transfer, "multitask": _multitask, "pretraining": _pretraining}
# "encoder" (a PretrainedEncoder) is trained inside a PretrainingModel, the "pretraining" case


def test_every_trainable_model_type_has_an_engine_case():
    assert set(MODEL_REGISTRY) - {"encoder"} <= set(MODES)


def _fit(model_type, device="cpu", **config):
    torch.manual_seed(0)
    model, train, val, terms, sources = MODES[model_type]()
    cfg = TrainerConfig(max_epochs=2, batch_size=16, patience=None, device=device, **config)
    history = Trainer(cfg, loss=terms).fit(model, train, val, sources=sources)
    return model, history, val


@pytest.mark.parametrize("model_type", sorted(MODES))
def test_each_mode_is_seeded_and_round_trips_after_training(model_type, tmp_path):
    model, history, val = _fit(model_type)
    again, again_history, _ = _fit(model_type)
    assert np.isfinite(history.train_loss).all() and history.train_loss == again_history.train_loss
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    model.save_pretrained(tmp_path / "m", preprocessing_state={"n": 1})
    loaded, _ = load_network(tmp_path / "m")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@CUDA
@pytest.mark.parametrize("model_type", sorted(MODES))
def test_each_mode_trains_on_cuda_with_mixed_precision(model_type):
    model, history, _ = _fit(model_type, device="cuda", mixed_precision=True)
    assert all(p.is_cuda for p in model.parameters())
    assert np.isfinite(history.train_loss).all() and len(history) == 2
