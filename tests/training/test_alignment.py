"""MMD estimator, DANN schedule and transfer training (risk + DANN + MMD loss terms on the one trainer)."""

import math

import numpy as np
import pytest
import torch

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.encoders.lstm import LSTMEncoderConfig
from healthfusion.models.transfer import TransferModel, TransferModelConfig
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.finetune import FinetuneConfig
from healthfusion.training.losses.dann import DANNLoss, dann_strength
from healthfusion.training.losses.mmd import MMDLoss, gaussian_mmd
from healthfusion.training.losses.supervised import SupervisedLoss
from healthfusion.training.objectives import Objective, class_weights_from_labels


def _reference_mmd(x, y, scales, h):
    """Direct double sum over pairs (biased V-statistic) as the reference."""
    def k(a, b):
        d2 = float(np.sum((a - b) ** 2))
        return sum(math.exp(-d2 / (s * h)) for s in scales)

    kxx = np.mean([[k(a, b) for b in x] for a in x])
    kyy = np.mean([[k(a, b) for b in y] for a in y])
    kxy = np.mean([[k(a, b) for b in y] for a in x])
    return kxx + kyy - 2 * kxy


def test_mmd_matches_a_direct_double_sum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(1.0, 1.0, size=(5, 3))
    got = float(gaussian_mmd(torch.tensor(x), torch.tensor(y), scales=(0.5, 2.0), bandwidth=1.5))
    assert got == pytest.approx(_reference_mmd(x, y, (0.5, 2.0), 1.5), rel=1e-6)


def test_mmd_is_zero_for_identical_samples_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    assert float(gaussian_mmd(x, x.clone())) == pytest.approx(0.0, abs=1e-6)
    same_dist = float(gaussian_mmd(x, torch.randn(64, 4, generator=g)))
    values = [float(gaussian_mmd(x, torch.randn(64, 4, generator=g) + shift)) for shift in (0.5, 1.0, 2.0, 4.0)]
    assert same_dist < values[0] < values[1] < values[2] < values[3]
    assert same_dist < 0.1 * values[-1]


def test_mmd_has_gradients_and_validates_input():
    x = torch.randn(5, 2, requires_grad=True)
    gaussian_mmd(x, torch.randn(6, 2) + 1).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="x \\[n, D\\]"):
        gaussian_mmd(torch.randn(5, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least one"):
        gaussian_mmd(torch.randn(0, 2), torch.randn(5, 2))


def test_dann_strength_schedule():
    assert dann_strength(0.0, 2.0) == 0.0
    assert dann_strength(1.0, 2.0) == pytest.approx(2.0, rel=1e-3)
    values = [dann_strength(p, 1.0) for p in np.linspace(0, 1, 11)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert dann_strength(0.5, 1.0, gamma=10) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    with pytest.raises(ValueError, match="progress"):
        dann_strength(1.5)


def _data(n, shift, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(shift, 1.0, size=(n, 4, 3)).astype(np.float32)
    y = (values[:, :, 0].mean(axis=1) - shift + 0.3 * rng.normal(size=n) > 0.4).astype(np.float32)
    return ArrayDataset({B.TS_VALUES: values, B.TS_MASK: np.ones_like(values), B.TS_DELTA: np.zeros_like(values),
                         B.TS_LENGTHS: np.full(n, 4, dtype=np.int64), B.TARGET: y})


def _model(seed=0):
    torch.manual_seed(seed)
    return TransferModel(TransferModelConfig(ts=LSTMEncoderConfig(n_variables=3, hidden_size=4, bidirectional=True,
                                                                  pooling="mean"), hidden=6, dropout=0.1))


SRC, TGT = _data(160, 0.0, 1), _data(80, 1.5, 2)


def fit_transfer(model, train, val, dann_weight=0.0, mmd_weight=0.0, mmd_schedule="constant", source=None,
                 target=None, **config):
    """The transfer workflow's composition: class-weighted risk (+ MMD) (+ DANN), early stopping on val_loss."""
    config = {"max_epochs": 20, "batch_size": 64, "patience": 5, "monitor": "val_loss", "imbalance": "class_weight",
              **config}
    terms = [SupervisedLoss("binary", class_weight=config["imbalance"] == "class_weight")]
    terms += [MMDLoss(mmd_weight, mmd_schedule)] if mmd_weight > 0 else []
    terms += [DANNLoss(dann_weight)] if dann_weight > 0 else []
    sources = {"source": source, "target": target} if source is not None or target is not None else None
    return Trainer(TrainerConfig(**config), loss=terms).fit(model, train, val, sources=sources)


def predict_proba(model, data):
    return Trainer(TrainerConfig(device="cpu")).predict(model, data, "binary")


def test_fit_transfer_is_reproducible_by_seed():
    cfg = {"max_epochs": 2, "batch_size": 64, "dann_weight": 1.0, "mmd_weight": 0.5, "seed": 4}
    probs = []
    for _ in range(2):
        model = _model()
        fit_transfer(model, SRC, TGT[:20], source=SRC, target=TGT, **cfg)
        probs.append(predict_proba(model, TGT))
    np.testing.assert_array_equal(probs[0], probs[1])
    model = _model()
    fit_transfer(model, SRC, TGT[:20], source=SRC, target=TGT, **{**cfg, "seed": 5})
    assert not np.array_equal(predict_proba(model, TGT), probs[0])


def test_dann_logs_domain_accuracy_strength_and_mmd():
    history = fit_transfer(_model(), SRC, TGT[:20], max_epochs=3, batch_size=32, patience=10, dann_weight=1.0,
                           mmd_weight=1.0, source=SRC, target=TGT)
    assert len(history.metrics["domain_accuracy"]) == 3
    assert all(0.0 <= a <= 1.0 for a in history.metrics["domain_accuracy"])
    assert all(m is not None and m >= 0 for m in history.metrics["mmd"])
    strengths = history.metrics["dann_strength"]  # the epoch's mean strength
    assert 0 < strengths[0] < strengths[1] < strengths[2] <= 1.0


def test_domain_classifier_learns_shifted_domains_without_reversal_pressure():
    """With a vanishing reversal strength, the classifier must learn to tell clearly shifted domains apart."""
    history = fit_transfer(_model(), SRC, TGT[:20], max_epochs=8, batch_size=32, patience=20, dann_weight=1e-6,
                           lr=5e-3, source=SRC, target=_data(80, 4.0, 3))
    assert history.metrics["domain_accuracy"][-1] > 0.8


def test_mmd_ramp_weights_the_first_step_by_zero():
    """Under the ramp the first step ignores MMD, so it equals a plain step; at full weight it does not."""
    def first_step(**kw):
        model = _model()
        fit_transfer(model, SRC[:32], TGT[:20], max_epochs=1, batch_size=32, source=SRC, target=TGT, **kw)
        return predict_proba(model, TGT)

    plain = first_step()
    np.testing.assert_allclose(first_step(mmd_weight=5.0, mmd_schedule="ramp"), plain, rtol=1e-6)
    assert not np.allclose(first_step(mmd_weight=5.0), plain, rtol=1e-6)


def test_alignment_needs_both_domains():
    with pytest.raises(ValueError, match="sources="):
        fit_transfer(_model(), SRC, TGT, mmd_weight=1.0, source=SRC)


def test_frozen_encoder_does_not_change_and_best_epoch_is_restored():
    model = _model()
    before = {k: v.clone() for k, v in model.ts_encoder.state_dict().items()}
    history = fit_transfer(model, TGT, TGT[:30], max_epochs=4, batch_size=16, patience=10,
                           finetune=FinetuneConfig(strategy="linear_probe", modules=("ts_encoder",)))
    for k, v in model.ts_encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert history.best_epoch == int(np.nanargmin(history.val_loss))
    assert all(p.requires_grad for p in model.parameters())  # frozen only during the fit


def test_early_stopping_stops_after_patience():
    history = fit_transfer(_model(), SRC, TGT[:20], max_epochs=50, batch_size=64, lr=5e-2, patience=2)
    assert history.stopped_early == (len(history.train_loss) < 50)
    assert len(history.train_loss) - 1 - history.best_epoch <= 2


def test_without_early_stopping_all_epochs_run_and_the_last_weights_stay():
    model = _model()
    history = fit_transfer(model, SRC, TGT[:20], max_epochs=4, batch_size=64, lr=5e-2, patience=None)
    assert len(history.train_loss) == 4 and not history.stopped_early
    val = TGT[:20]
    objective = Objective("binary", class_weights_from_labels(SRC[B.TARGET], "binary"))
    logits = torch.logit(torch.tensor(predict_proba(model, val), dtype=torch.float64))
    last = float(objective(logits.float(), torch.tensor(val[B.TARGET])))
    assert last == pytest.approx(history.val_loss[-1], rel=1e-4)  # the model holds the last epoch's weights


def test_class_weight_needs_both_classes():
    one_class = SRC.with_arrays(**{B.TARGET: np.zeros(len(SRC), dtype=np.float32)})
    with pytest.raises(ValueError, match="positives and negatives"):
        fit_transfer(_model(), one_class, TGT, max_epochs=1)
