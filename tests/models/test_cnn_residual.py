"""CNN encoder with residual blocks: shapes, shortcuts, pass-through behaviour, config checks, save/load."""

import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from healthfusion.models.base import model_fingerprint
from healthfusion.models.encoders.cnn import CNNEncoder, CNNEncoderConfig, ResidualBlock
from healthfusion.models.hybrid import HybridConfig, HybridModel

BN_KEYS = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN_KEYS]


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [28, 64])
def test_residual_encoder_shapes(in_channels, size):
    cfg = CNNEncoderConfig(in_channels=in_channels, image_size=size, channels=(4, 8, 8), convs_per_block=2,
                           residual=True, out_dim=5)
    enc = CNNEncoder(cfg).eval()
    image = torch.randn(2, in_channels, size, size)
    assert enc.blocks(image).shape == (2, 8, size // 8, size // 8)
    assert enc(image).shape == (2, 5)
    assert all(isinstance(block, ResidualBlock) for block in enc.blocks)


def test_projection_only_where_channels_change():
    enc = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28, channels=(4, 4, 8), convs_per_block=2,
                                      residual=True))
    first, same, wider = enc.blocks
    assert isinstance(same.shortcut, nn.Identity)
    for block, (c_in, c_out) in ((first, (1, 4)), (wider, (4, 8))):
        conv, bn = block.shortcut
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.bias is None
        assert (conv.in_channels, conv.out_channels) == (c_in, c_out)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == c_out
    convs = [m for m in first.branch if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 4, (3, 3)), (4, 4, (3, 3))]


def test_branch_has_n_convs_and_no_relu_after_the_last():
    block = ResidualBlock(3, 6, n_convs=3, batchnorm=True)
    kinds = [type(m).__name__ for m in block.branch]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"]


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("in_ch,out_ch", [(4, 4), (3, 6)])
def test_zeroed_branch_passes_the_shortcut_through(batchnorm, in_ch, out_ch):
    torch.manual_seed(0)
    block = ResidualBlock(in_ch, out_ch, n_convs=2, batchnorm=batchnorm).eval()
    with torch.no_grad():
        for module in block.branch:
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
    x = torch.randn(2, in_ch, 8, 8)
    shortcut = x if in_ch == out_ch else block.shortcut(x)
    if in_ch != out_ch:
        assert not torch.equal(shortcut[:, :in_ch], x)  # a real projection, not a copy
    expected = nn.functional.max_pool2d(torch.relu(shortcut), 2)
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_residual_input_gradient_reaches_image():
    enc = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 4), convs_per_block=2,
                                      residual=True, out_dim=3)).eval()
    image = torch.randn(2, 1, 16, 16, requires_grad=True)
    enc(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_residual_needs_two_convs_per_block():
    with pytest.raises(ValidationError, match="residual=True needs convs_per_block >= 2"):
        CNNEncoderConfig(in_channels=1, image_size=28, residual=True)
    CNNEncoderConfig(in_channels=1, image_size=28, residual=True, convs_per_block=3)


def test_default_state_dict_keys_are_the_plain_blocks():
    """The keys models saved before ``residual`` existed carry; they must not change."""
    enc = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28))
    expected = []
    for conv, bn in ((0, 1), (4, 5), (8, 9)):
        expected += [f"blocks.{conv}.weight"] + _bn(f"blocks.{bn}")
    assert list(enc.state_dict()) == expected + ["fc.weight", "fc.bias"]
    same = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28, residual=False))
    assert [(k, v.shape) for k, v in same.state_dict().items()] == [(k, v.shape) for k, v in enc.state_dict().items()]


def test_residual_state_dict_keys():
    enc = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28, channels=(4, 4), convs_per_block=2,
                                      residual=True))
    expected = (["blocks.0.branch.0.weight"] + _bn("blocks.0.branch.1") + ["blocks.0.branch.3.weight"]
                + _bn("blocks.0.branch.4") + ["blocks.0.shortcut.0.weight"] + _bn("blocks.0.shortcut.1")
                + ["blocks.1.branch.0.weight"] + _bn("blocks.1.branch.1") + ["blocks.1.branch.3.weight"]
                + _bn("blocks.1.branch.4") + ["fc.weight", "fc.bias"])
    assert list(enc.state_dict()) == expected


def _image_model(residual: bool) -> HybridModel:
    image = CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 8), convs_per_block=2, residual=residual,
                             out_dim=8)
    return HybridModel(HybridConfig(image=image, fc_hidden=(8,)))


@pytest.mark.parametrize("residual", [True, False])
def test_hybrid_round_trip_is_bit_exact(residual, tmp_path):
    torch.manual_seed(0)
    model = _image_model(residual)
    batch = {"image": torch.randn(4, 1, 16, 16)}
    model.train()(batch)  # non-trivial batch-norm running statistics
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["image"]["residual"] is residual
    loaded = HybridModel.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    sa, sb = model.state_dict(), loaded.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    model.eval()
    assert torch.equal(model(batch)["logits"], loaded(batch)["logits"])


def test_folder_saved_before_the_option_still_loads(tmp_path):
    """A config.json without the ``residual`` key (as older versions wrote it) loads as plain blocks."""
    model = _image_model(residual=False)
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    del config["image"]["residual"]
    config["model_fingerprint"] = model_fingerprint(config, model.state_dict())
    path.write_text(json.dumps(config))
    loaded = HybridModel.from_pretrained(tmp_path / "m")
    assert loaded.config.image.residual is False
    batch = {"image": torch.randn(3, 1, 16, 16)}
    model.eval()
    assert torch.equal(model(batch)["logits"], loaded(batch)["logits"])
