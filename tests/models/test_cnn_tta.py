"""Flip test-time augmentation of the CNN encoder (``CNNEncoderConfig.tta``, a run config's ``model.image.tta``):
in eval mode the image feature is the mean over the image and its left-right mirror; training is unchanged; the
option is saved with the model."""

import json

import pytest
import torch

from healthfusion.models.base import model_fingerprint
from healthfusion.models.encoders.cnn import CNNEncoder, CNNEncoderConfig
from healthfusion.models.hybrid import HybridConfig, HybridModel


def _pair(**extra):
    torch.manual_seed(0)
    cfg = CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 8), out_dim=6, **extra)
    plain = CNNEncoder(cfg)
    tta = CNNEncoder(cfg.model_copy(update={"tta": "flip"}))
    tta.load_state_dict(plain.state_dict())
    plain.train()(torch.randn(8, 1, 16, 16))  # non-trivial batch-norm statistics, then copied again
    tta.load_state_dict(plain.state_dict())
    return plain, tta


@pytest.mark.parametrize("extra", [{}, {"residual": True, "convs_per_block": 2}])
def test_eval_features_are_the_mean_over_the_image_and_its_mirror(extra):
    plain, tta = _pair(**extra)
    plain.eval(), tta.eval()
    x = torch.randn(5, 1, 16, 16)
    expected = 0.5 * (plain(x) + plain(x.flip(-1)))
    assert torch.allclose(tta(x), expected, atol=1e-6)
    assert not torch.allclose(tta(x), plain(x), atol=1e-4)  # it does change the features
    assert torch.allclose(tta(x), tta(x.flip(-1)), atol=1e-6)  # and makes them mirror-invariant


def test_training_mode_is_unchanged():
    plain, tta = _pair()
    plain.train(), tta.train()
    x = torch.randn(4, 1, 16, 16)
    assert torch.equal(plain(x), tta(x))


def test_tta_is_saved_with_the_model_and_old_folders_load_without_it(tmp_path):
    image = CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 8), out_dim=8, tta="flip")
    model = HybridModel(HybridConfig(image=image, fc_hidden=(8,))).eval()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["image"]["tta"] == "flip"
    batch = {"image": torch.randn(3, 1, 16, 16)}
    assert torch.equal(HybridModel.from_pretrained(tmp_path / "m")(batch)["logits"], model(batch)["logits"])
    del config["image"]["tta"]  # as written before the option existed
    config["model_fingerprint"] = model_fingerprint(config, model.state_dict())
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert HybridModel.from_pretrained(tmp_path / "m").config.image.tta == "none"
    with pytest.raises(ValueError, match="tta"):
        CNNEncoderConfig(in_channels=1, image_size=16, tta="rotate")


def test_the_exported_onnx_model_applies_the_same_tta(tmp_path):
    pytest.importorskip("onnxruntime")
    from healthfusion.models.export import OnnxScorer, export_onnx

    torch.manual_seed(0)
    image = CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 8), out_dim=8, tta="flip")
    model = HybridModel(HybridConfig(image=image, fc_hidden=(8,))).eval()
    example = {"image": torch.randn(3, 1, 16, 16), "image_present": torch.ones(3, dtype=torch.bool)}
    scorer = OnnxScorer(export_onnx(model, example, tmp_path / "m.onnx"), model)
    batch = {"image": torch.randn(5, 1, 16, 16), "image_present": torch.ones(5, dtype=torch.bool)}
    expected = model(batch)["logits"].detach().numpy()
    assert abs(scorer.logits(batch) - expected).max() <= 1e-5
    no_tta = model.encoders["image"]
    no_tta.config = no_tta.config.model_copy(update={"tta": "none"})
    assert abs(scorer.logits(batch) - model(batch)["logits"].detach().numpy()).max() > 1e-4  # TTA is in the graph
