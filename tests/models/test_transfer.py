"""The transfer BiLSTM: gradient reversal, shapes, embeddings, freezing and save/load."""

import numpy as np
import pytest
import torch

from healthfusion.features import batch as B
from healthfusion.models.base import load_model
from healthfusion.models.encoders.lstm import LSTMEncoderConfig
from healthfusion.models.transfer import (
    CATEGORICAL,
    CategoricalEmbedding,
    GradientReversal,
    TransferModel,
    TransferModelConfig,
    reverse_gradient,
)


def _config(**kw):
    base = dict(ts=LSTMEncoderConfig(n_variables=3, hidden_size=4, bidirectional=True, pooling="mean"),
                static_dim=2, static_hidden=3, hidden=5,
                categorical=(CategoricalEmbedding(name="unit", n_levels=3, dim=2),))
    return TransferModelConfig(**{**base, **kw})


def _batch(n=6, t=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {B.TS_VALUES: torch.randn(n, t, 3, generator=g), B.TS_MASK: (torch.rand(n, t, 3, generator=g) > 0.3).float(),
            B.TS_DELTA: torch.rand(n, t, 3, generator=g), B.TS_LENGTHS: torch.full((n,), t, dtype=torch.int64),
            B.STATIC: torch.randn(n, 2, generator=g), CATEGORICAL: torch.tensor([[0], [1], [2], [3], [1], [2]])[:n]}


@pytest.mark.parametrize("strength", [0.0, 0.3, 1.0, 2.5])
def test_reverse_gradient_is_identity_forward_and_negates_scaled_gradient(strength):
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = reverse_gradient(x, strength)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -strength * w)
    with pytest.raises(ValueError, match=">= 0"):
        reverse_gradient(x, -1.0)


def test_grl_module_uses_its_strength():
    x = torch.ones(2, requires_grad=True)
    GradientReversal(0.5)(x).sum().backward()
    assert torch.allclose(x.grad, torch.full((2,), -0.5))


def test_domain_loss_trains_the_classifier_normally_and_the_encoder_reversed():
    torch.manual_seed(0)
    model = TransferModel(_config(dropout=0.0))
    batch = _batch()
    domain = torch.tensor([0.0, 0, 0, 1, 1, 1])

    def grads(use_grl: bool, strength: float):
        model.zero_grad()
        z = model.encode(batch)
        logits = model.domain_logits(z, strength) if use_grl else model.domain_classifier(z).squeeze(-1)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, domain).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, reversed_ = grads(False, 1.0), grads(True, 0.7)
    for name, g in plain.items():
        if name.startswith("domain_classifier"):
            assert torch.allclose(reversed_[name], g, atol=1e-6), name
        else:
            assert torch.allclose(reversed_[name], -0.7 * g, atol=1e-6), name
    assert any(n.startswith("ts_encoder") for n in plain)
    assert not any(n.startswith("head") for n in plain)  # the risk head is not part of the domain loss


def test_forward_shapes_and_unknown_level_is_a_zero_vector():
    model = TransferModel(_config())
    out = model(_batch())
    assert out["logits"].shape == (6,) and out["embedding"].shape == (6, 5) and out["ts_attention"].shape == (6, 4)
    assert torch.equal(model.embeddings[0].weight[0], torch.zeros(2))
    assert model.domain_logits(out["embedding"]).shape == (6,)


@pytest.mark.parametrize("key, value, match", [
    (CATEGORICAL, torch.tensor([[4]] * 6), "outside 0..3"),
    (B.STATIC, torch.randn(6, 5), r"static must be \[B, 2\]"),
])
def test_bad_inputs_raise(key, value, match):
    batch = _batch()
    batch[key] = value
    with pytest.raises(ValueError, match=match):
        TransferModel(_config())(batch)


def test_missing_key_is_named():
    batch = _batch()
    del batch[CATEGORICAL]
    with pytest.raises(ValueError, match=CATEGORICAL):
        TransferModel(_config())(batch)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(1)
    model = TransferModel(_config()).eval()
    model.save_pretrained(tmp_path / "m", preprocessing_state={"categorical": {"unit": ["a", "b", "c"]}})
    loaded, state = load_model(tmp_path / "m")
    assert isinstance(loaded, TransferModel) and state == {"categorical": {"unit": ["a", "b", "c"]}}
    batch = _batch()
    np.testing.assert_array_equal(model(batch)["logits"].detach().numpy(), loaded(batch)["logits"].detach().numpy())
    assert isinstance(loaded.ts_encoder, torch.nn.Module)


def test_model_without_static_or_categoricals():
    model = TransferModel(_config(static_dim=0, categorical=()))
    batch = {k: v for k, v in _batch().items() if k not in (B.STATIC, CATEGORICAL)}
    assert model(batch)["logits"].shape == (6,)
