import pytest
import torch
from pydantic import ValidationError

from healthfusion.models import (
    CNNEncoder,
    CNNEncoderConfig,
    CodesEncoder,
    CodesEncoderConfig,
    LSTMEncoder,
    LSTMEncoderConfig,
    MLPEncoder,
    MLPEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)


# --- CNN ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "channels,size,batchnorm,pooling",
    [(1, 28, True, "avg"), (3, 32, False, "max"), (3, 224, True, "avg")],
)
def test_cnn_shapes(channels, size, batchnorm, pooling):
    cfg = CNNEncoderConfig(
        in_channels=channels, image_size=size, channels=(4, 8), batchnorm=batchnorm, pooling=pooling,
        dropout=0.2, out_dim=12,
    )
    out = CNNEncoder(cfg)(torch.randn(2, channels, size, size))
    assert out.shape == (2, 12)


def test_cnn_input_gradient_reaches_image():
    enc = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28, channels=(4,), out_dim=8)).eval()
    image = torch.randn(3, 1, 28, 28, requires_grad=True)
    enc(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_cnn_rejects_bad_input_and_config():
    enc = CNNEncoder(CNNEncoderConfig(in_channels=3, image_size=28, channels=(4,)))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        enc(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValidationError, match="too small"):
        CNNEncoderConfig(in_channels=1, image_size=8, channels=(4, 4, 4, 4))
    with pytest.raises(ValidationError):
        CNNEncoderConfig(in_channels=1, image_size=28, kernel=5)


# --- LSTM ---------------------------------------------------------------------------------------------------------
def _ts(b=4, t=6, v=3, lengths=(6, 4, 1, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, t, v, generator=g),
        (torch.rand(b, t, v, generator=g) > 0.5).float(),
        torch.rand(b, t, v, generator=g),
        torch.tensor(lengths),
    )


@pytest.mark.parametrize("pooling", ["attention", "last", "mean"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_shapes_and_weights(pooling, bidirectional):
    cfg = LSTMEncoderConfig(n_variables=3, hidden_size=8, num_layers=2, bidirectional=bidirectional, pooling=pooling)
    enc = LSTMEncoder(cfg)
    values, mask, delta, lengths = _ts()
    feats, weights = enc(values, mask, delta, lengths)
    assert feats.shape == (4, enc.out_dim) and enc.out_dim == 8 * (2 if bidirectional else 1)
    assert weights.shape == (4, 6)
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    padding = torch.arange(6)[None, :] >= lengths[:, None]
    assert torch.all(weights[padding] == 0)


@pytest.mark.parametrize("pooling", ["attention", "last", "mean"])
def test_lstm_padding_does_not_influence_output(pooling):
    enc = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=8, bidirectional=True, pooling=pooling)).eval()
    values, mask, delta, lengths = _ts()
    feats, weights = enc(values, mask, delta, lengths)
    padding = (torch.arange(6)[None, :] >= lengths[:, None])[:, :, None].expand_as(values)
    noisy = [x.masked_fill(padding, 99.0) for x in (values, mask, delta)]
    feats2, weights2 = enc(*noisy, lengths)
    assert torch.equal(feats, feats2) and torch.equal(weights, weights2)


def test_lstm_without_delta_and_without_lengths():
    enc = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=8, use_delta=False))
    values, mask, _, _ = _ts()
    feats, weights = enc(values, mask)
    assert feats.shape == (4, 8) and torch.all(weights > 0)
    assert enc.lstm.input_size == 6


def test_lstm_input_gradient_reaches_values_only_on_real_steps():
    enc = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=8)).eval()
    values, mask, delta, lengths = _ts()
    values.requires_grad_(True)
    enc(values, mask, delta, lengths)[0].sum().backward()
    assert values.grad.abs().sum() > 0
    padding = torch.arange(6)[None, :] >= lengths[:, None]
    assert torch.all(values.grad[padding] == 0)


def test_lstm_accepts_int32_lengths():
    enc = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=8, pooling="last")).eval()
    values, mask, delta, lengths = _ts()
    a = enc(values, mask, delta, lengths)
    b = enc(values, mask, delta, lengths.to(torch.int32))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_lstm_rejects_bad_input():
    enc = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=8))
    values, mask, delta, _ = _ts()
    with pytest.raises(ValueError, match="use_delta"):
        enc(values, mask)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        enc(values, mask, delta, torch.tensor([6, 0, 2, 2]))
    with pytest.raises(ValueError, match="n_variables"):
        enc(values[:, :, :2], mask[:, :, :2], delta[:, :, :2])
    with pytest.raises(ValueError, match="ts_mask"):
        enc(values, mask[:, :5], delta)
    with pytest.raises(ValueError, match="integer"):
        enc(values, mask, delta, torch.full((4,), 6.0))


# --- MLP, codes, text ---------------------------------------------------------------------------------------------
def test_mlp_shapes_and_width_check():
    enc = MLPEncoder(MLPEncoderConfig(in_dim=5, hidden_sizes=(16, 8), dropout=0.1))
    assert enc(torch.randn(4, 5)).shape == (4, 8) and enc.out_dim == 8
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        enc(torch.randn(4, 6))
    with pytest.raises(ValidationError):
        MLPEncoderConfig(in_dim=5, hidden_sizes=())


def test_codes_mean_bag_ignores_padding():
    enc = CodesEncoder(CodesEncoderConfig(vocab_size=10, embedding_dim=8))
    codes = torch.tensor([[3, 5, 0, 0], [3, 5, 0, 0], [0, 0, 0, 0], [7, 0, 0, 0]])
    out = enc(codes)
    assert out.shape == (4, 8)
    weight = enc.embed.bag.weight
    torch.testing.assert_close(out[0], (weight[3] + weight[5]) / 2)
    assert torch.equal(out[2], torch.zeros(8))
    assert torch.equal(enc(codes[:, :2])[0], out[0])


def test_codes_and_text_reject_out_of_range_ids():
    codes = CodesEncoder(CodesEncoderConfig(vocab_size=10))
    with pytest.raises(ValueError, match=r"0\.\.9"):
        codes(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="int64"):
        codes(torch.tensor([[1.0, 2.0]]))
    text = TextEncoder(TextEncoderConfig(n_buckets=16))
    with pytest.raises(ValueError, match=r"\[-1, 2\]"):
        text(torch.tensor([[-1, 2]]))


@pytest.mark.parametrize("hidden", [(), (8,), (16, 4)])
def test_text_shapes(hidden):
    enc = TextEncoder(TextEncoderConfig(n_buckets=64, embedding_dim=12, hidden_sizes=hidden))
    out = enc(torch.randint(0, 64, (5, 9)))
    expected = hidden[-1] if hidden else 12
    assert out.shape == (5, expected) and enc.out_dim == expected


# --- CNN: convs_per_block -----------------------------------------------------------------------------------------
def test_cnn_default_state_dict_keys_unchanged():
    enc = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28, channels=(4, 8), out_dim=6))
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = (
        ["blocks.0.weight"] + [f"blocks.1.{k}" for k in bn]
        + ["blocks.4.weight"] + [f"blocks.5.{k}" for k in bn] + ["fc.weight", "fc.bias"]
    )
    assert list(enc.state_dict()) == expected


@pytest.mark.parametrize("batchnorm", [True, False])
def test_cnn_convs_per_block_layers_shape_and_saliency(batchnorm):
    cfg = CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 8), convs_per_block=3, batchnorm=batchnorm,
                           out_dim=6)
    enc = CNNEncoder(cfg).eval()
    convs = [m for m in enc.blocks if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 4), (4, 4), (4, 4), (4, 8), (8, 8), (8, 8)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in enc.blocks) == (6 if batchnorm else 0)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in enc.blocks) == 2
    image = torch.randn(2, 1, 16, 16, requires_grad=True)
    out = enc(image)
    assert out.shape == (2, 6) and enc.blocks(image).shape == (2, 8, 4, 4)
    out.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    with pytest.raises(ValidationError):
        CNNEncoderConfig(in_channels=1, image_size=16, convs_per_block=0)


# --- LSTM: input decay --------------------------------------------------------------------------------------------
def test_lstm_input_decay_matches_formula():
    enc = LSTMEncoder(LSTMEncoderConfig(n_variables=2, hidden_size=4, input_decay=True))
    with torch.no_grad():
        enc.decay_weight.copy_(torch.tensor([2.0, -1.0]))
        enc.decay_bias.copy_(torch.tensor([0.5, 0.25]))
    values = torch.tensor([[[1.0, -2.0], [2.0, -2.0], [3.0, 4.0]]])
    mask = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])
    delta = torch.tensor([[[0.0, 0.0], [0.5, 0.5], [0.0, 1.0]]])
    # variable 0: w * delta + b = 1.5 -> gamma exp(-1.5); variable 1: -0.25 at delta 0.5 and -0.75 at 1 -> gamma 1
    expected = torch.tensor([[[1.0, -2.0], [2.0 * torch.exp(torch.tensor(-1.5)).item(), -2.0], [3.0, 4.0]]])
    torch.testing.assert_close(enc.decayed_values(values, mask, delta), expected)


def test_lstm_input_decay_is_identity_when_everything_is_observed():
    values, _, delta, lengths = _ts()
    mask = torch.ones_like(values)
    plain = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=5)).eval()
    decay = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=5, input_decay=True)).eval()
    decay.load_state_dict({**plain.state_dict(), "decay_weight": torch.full((3,), 3.0),
                           "decay_bias": torch.ones(3)})
    for a, b in zip(plain(values, mask, delta, lengths), decay(values, mask, delta, lengths), strict=True):
        torch.testing.assert_close(a, b)


def test_lstm_input_decay_parameters_learn_and_default_keys_unchanged():
    plain = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=5))
    assert not any("decay" in k for k in plain.state_dict())
    enc = LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=5, input_decay=True))
    assert set(enc.state_dict()) == set(plain.state_dict()) | {"decay_weight", "decay_bias"}
    features, _ = enc(*_ts())
    features.sum().backward()
    assert enc.decay_weight.grad.abs().sum() > 0 and enc.decay_bias.grad.abs().sum() > 0
    with pytest.raises(ValidationError, match="use_delta=True"):
        LSTMEncoderConfig(n_variables=3, input_decay=True, use_delta=False)
