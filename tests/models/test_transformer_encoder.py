"""The time-series Transformer encoder: the LSTM encoder's output contract, padding invariance in both modes, the
sinusoidal time encoding, config validation, and the hybrid model built, saved and loaded with it."""

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from healthfusion.evaluation.explain import attribute_timeseries, model_forward
from healthfusion.models.base import load_network
from healthfusion.models.encoders import LSTMEncoderConfig, MLPEncoderConfig
from healthfusion.models.encoders.transformer import (
    TransformerEncoder,
    TransformerEncoderConfig,
    sinusoidal_encoding,
)
from healthfusion.models.hybrid import HybridConfig, HybridModel

B, T, V = 5, 7, 3
LENGTHS = torch.tensor([7, 4, 1, 6, 2])
VALID = torch.arange(T)[None, :] < LENGTHS[:, None]


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, T, V, generator=g) < 0.6).float()
    return torch.randn(B, T, V, generator=g), mask, torch.rand(B, T, V, generator=g), LENGTHS.clone()


def encoder(seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(n_variables=V, d_model=8, num_heads=2, attention_dim=4, dropout=0.0)
    return TransformerEncoder(TransformerEncoderConfig(**fields | overrides))


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
def test_shapes_and_weights_sum_to_one_over_real_steps(pooling):
    enc = encoder(pooling=pooling)
    feats, weights = enc(*inputs())
    assert enc.out_dim == 8 and feats.shape == (B, 8) and weights.shape == (B, T)
    torch.testing.assert_close(weights.sum(1), torch.ones(B))
    assert torch.all(weights[~VALID] == 0) and torch.all(weights[VALID] > 0) == (pooling != "last")
    if pooling == "last":
        assert torch.equal(weights.argmax(1), LENGTHS - 1)
    if pooling == "mean":
        torch.testing.assert_close(weights[VALID], (1.0 / LENGTHS.float()).repeat_interleave(LENGTHS))


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
@pytest.mark.parametrize("train", [True, False])
def test_padded_steps_do_not_influence_the_output(pooling, train):
    enc = encoder(pooling=pooling, dropout=0.2).train(train)
    values, mask, delta, lengths = inputs()
    noisy = [x.clone() for x in (values, mask, delta)]
    for x in noisy:
        x[~VALID] = torch.randn(int((~VALID).sum()), V) * 1e3
    noisy[0][1, 5, 0] = float("nan")  # even a NaN on padding stays out
    torch.manual_seed(3)
    out = enc(values, mask, delta, lengths)
    torch.manual_seed(3)
    changed = enc(*noisy, lengths)
    for a, b in zip(out, changed, strict=True):
        assert torch.equal(a, b)


def test_each_row_depends_only_on_its_own_real_steps():
    """A row's output equals the one from the same row alone, truncated to its length (no cross-row leaks)."""
    enc = encoder().eval()
    values, mask, delta, lengths = inputs()
    feats, weights = enc(values, mask, delta, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone, w = enc(values[i : i + 1, :n], mask[i : i + 1, :n], delta[i : i + 1, :n], None)
        torch.testing.assert_close(alone[0], feats[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w[0], weights[i, :n], atol=1e-5, rtol=1e-5)


def test_eval_mode_is_deterministic_with_and_without_grad():
    enc = encoder(dropout=0.3).eval()
    x = inputs()
    first = enc(*x)
    assert all(torch.equal(a, b) for a, b in zip(first, enc(*x), strict=True))
    with torch.no_grad():  # PyTorch's inference fast path: the same numbers up to rounding, also next to padding
        fast = enc(*x)
    for a, b in zip(first, fast, strict=True):
        torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=1e-5)


def test_time_encoding_makes_the_encoder_order_aware_and_matches_the_formula():
    enc = encoder(pooling="mean").eval()
    values, mask, delta, _ = inputs()
    full = torch.full((B,), T)
    flipped = [x.flip(1) for x in (values, mask, delta)]
    assert not torch.allclose(enc(values, mask, delta, full)[0], enc(*flipped, full)[0])
    pe = sinusoidal_encoding(5, 6)
    angle = 3 / 10000 ** (4 / 6)  # step 3, channels 4 and 5 (i = 2)
    torch.testing.assert_close(pe[3, 4:6], torch.tensor([math.sin(angle), math.cos(angle)]))
    assert sinusoidal_encoding(4, 5).shape == (4, 5) and torch.equal(pe[0, 1::2], torch.ones(3))


def test_without_delta_and_bad_inputs():
    enc = encoder(use_delta=False)
    values, mask, delta, lengths = inputs()
    assert enc.input_proj.in_features == 2 * V
    torch.testing.assert_close(enc(values, mask, None, lengths)[0], enc(values, mask, delta, lengths)[0])
    with pytest.raises(ValueError, match="TransformerEncoder expects ts_values"):
        encoder()(values[:, :, :2], mask[:, :, :2], delta[:, :, :2], lengths)
    with pytest.raises(ValueError, match="use_delta=True but got no ts_delta"):
        encoder()(values, mask, None, lengths)
    with pytest.raises(ValueError, match="ts_lengths must be in 1..7"):
        encoder()(values, mask, delta, torch.tensor([7, 0, 1, 8, 2]))


def test_heads_must_divide_width():
    with pytest.raises(ValidationError, match="num_heads=3 must divide d_model=8"):
        TransformerEncoderConfig(n_variables=V, d_model=8, num_heads=3)
    assert TransformerEncoderConfig(n_variables=V).dim_feedforward is None
    assert encoder().layers.layers[0].linear1.out_features == 16  # default feed-forward width 2 * d_model


def hybrid(ts_config, seed=0):
    torch.manual_seed(seed)
    return HybridModel(HybridConfig(ts=ts_config, static=MLPEncoderConfig(in_dim=2), fc_hidden=(8,)))


def batch(seed=0):
    values, mask, delta, lengths = inputs(seed)
    return {"ts_values": values, "ts_mask": mask, "ts_delta": delta, "ts_lengths": lengths,
            "static": torch.randn(B, 2, generator=torch.Generator().manual_seed(seed))}


def test_hybrid_with_transformer_trains_saves_and_loads_bit_exact(tmp_path):
    model = hybrid(TransformerEncoderConfig(n_variables=V, d_model=8, num_heads=2))
    assert isinstance(model.encoders["ts"], TransformerEncoder)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = batch(), torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["ts"]["encoder"] == "transformer" and saved["ts"]["d_model"] == 8
    loaded, _ = load_network(tmp_path / "m")
    assert loaded.config == model.config and isinstance(loaded.encoders["ts"], TransformerEncoder)
    model.eval(), loaded.eval()
    out, again = model(batch(1)), loaded(batch(1))
    assert torch.equal(out["logits"], again["logits"]) and torch.equal(out["ts_attention"], again["ts_attention"])


def test_saved_lstm_configs_without_encoder_key_still_load_as_lstm():
    dumped = HybridConfig(ts=LSTMEncoderConfig(n_variables=V), static=MLPEncoderConfig(in_dim=2)).model_dump(mode="json")
    assert isinstance(HybridConfig.model_validate(dumped).ts, LSTMEncoderConfig)
    dumped["ts"].pop("encoder")
    assert isinstance(HybridConfig.model_validate(dumped).ts, LSTMEncoderConfig)
    with pytest.raises(ValidationError, match="'lstm', 'transformer'"):
        HybridConfig.model_validate({"ts": {"n_variables": V, "encoder": "gru"}})


def test_integrated_gradients_completeness_through_the_transformer():
    model = hybrid(TransformerEncoderConfig(n_variables=V, d_model=8, num_heads=2)).eval()
    x, bg = batch(1), batch(2)
    full = torch.full((B,), T)
    x["ts_lengths"], bg["ts_lengths"] = full, full.clone()
    r = attribute_timeseries(model_forward(model), x, background=bg, variables=["a", "b", "c"],
                             method="integrated_gradients", n_samples=64, include_static=True)
    base = dict(x, ts_values=bg["ts_values"].mean(0, keepdim=True).expand(B, -1, -1),
                static=bg["static"].mean(0, keepdim=True).expand(B, -1))
    with torch.no_grad():
        delta = (model(x)["logits"] - model(base)["logits"]).numpy()
    total = r.values.sum(axis=(1, 2)) + r.static_values.sum(axis=1)
    np.testing.assert_allclose(total, delta, atol=2e-3 + 0.02 * np.abs(delta).max())
