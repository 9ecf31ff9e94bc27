"""Image saliency (gradient against a hand-computed gradient, Grad-CAM shape and locality), attention weights and
Shapley values over modalities (efficiency, agreement with ablation on an additive model)."""

import numpy as np
import pytest
import torch
from torch import nn

from healthfusion.evaluation.explain_multimodal import (
    attention_over_time,
    image_saliency,
    modality_contributions,
)
from healthfusion.models.encoders import CNNEncoderConfig, LSTMEncoderConfig, MLPEncoderConfig
from healthfusion.models.hybrid import HybridConfig, HybridModel


def hybrid(fusion="concat"):
    torch.manual_seed(0)
    return HybridModel(HybridConfig(ts=LSTMEncoderConfig(n_variables=3, hidden_size=8),
                                    static=MLPEncoderConfig(in_dim=2),
                                    image=CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 8), out_dim=8),
                                    fusion=fusion, fc_hidden=(8,))).eval()


def batch(n=4):
    g = torch.Generator().manual_seed(1)
    return {"ts_values": torch.randn(n, 5, 3, generator=g), "ts_mask": torch.ones(n, 5, 3),
            "ts_delta": torch.zeros(n, 5, 3), "ts_lengths": torch.tensor([5, 4, 3, 5][:n]),
            "static": torch.randn(n, 2, generator=g), "image": torch.randn(n, 1, 16, 16, generator=g),
            "image_present": torch.tensor([True, True, False, True][:n])}


class Spot(nn.Module):
    """Logit = 3 * sum of the top-left 4x4 patch: only that patch matters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, b):
        return 3 * self.conv(b["image"])[:, 0, :4, :4].sum(dim=(1, 2))


def test_gradient_saliency_equals_analytic_gradient_and_gradcam_localises():
    x = {"image": torch.randn(2, 1, 8, 8)}
    sal = image_saliency(Spot(), x, method="gradient")
    expected = np.zeros((2, 8, 8))
    expected[:, :4, :4] = 3.0
    np.testing.assert_allclose(sal, expected)
    ig = image_saliency(Spot(), x, method="integrated_gradients")
    np.testing.assert_allclose(ig[:, 4:, :], 0.0)
    # Grad-CAM by hand: channel weight = spatial mean of the gradient (3 * 16 / 64), map = relu(weight * activation)
    cam = image_saliency(Spot(), x, method="grad_cam")
    np.testing.assert_allclose(cam, np.maximum(0.75 * x["image"][:, 0].numpy(), 0), rtol=1e-5)


def test_hybrid_saliency_and_attention_shapes():
    model, b = hybrid(), batch()
    for method in ("gradient", "grad_cam"):
        assert image_saliency(model, b, method=method).shape == (4, 16, 16)
    att = attention_over_time(model, b)
    assert att.shape == (4, 5)
    np.testing.assert_allclose(att.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(att[1, 4:] == 0) and np.all(att[2, 3:] == 0)  # padded steps get no attention
    with pytest.raises(ValueError, match="Unknown saliency method"):
        image_saliency(model, b, method="occlusion")


def test_shapley_over_modalities_is_efficient_and_respects_absence():
    model, b = hybrid(fusion="attention"), batch()
    shap_table = modality_contributions(model, b, method="shapley")
    with torch.no_grad():
        logits = model(b)["logits"].numpy()
    np.testing.assert_allclose(shap_table.sum(axis=1), logits - logits.mean(), atol=1e-5)
    assert shap_table.loc[2, "image"] == pytest.approx(0.0, abs=1e-6)  # row 2 has no image
    ablation = modality_contributions(model, b, method="ablation")
    assert list(ablation.columns) == ["ts", "static", "image"] and ablation.loc[2, "image"] == 0.0


class Additive(nn.Module):
    """Logit = a * ts_present + b * static_present: Shapley and ablation both give a and b."""

    modalities = ("ts", "static")

    def forward(self, b):
        n = b["static"].shape[0]
        ts = b.get("ts_present", torch.ones(n, dtype=torch.bool)).float()
        st = b.get("static_present", torch.ones(n, dtype=torch.bool)).float()
        return 2.0 * ts - 1.0 * st + b["static"][:, 0] * 0


def test_additive_model_contributions():
    b = {"static": torch.zeros(3, 1), "ts_values": torch.zeros(3, 1, 1)}
    abl = modality_contributions(Additive(), b, method="ablation")
    np.testing.assert_allclose(abl.to_numpy(), [[2.0, -1.0]] * 3)
