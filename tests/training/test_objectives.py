import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from healthfusion.training.objectives import (
    Objective,
    check_targets,
    class_weights_from_labels,
    logits_to_output,
    masked_loss,
)

NAN = float("nan")


def test_binary_matches_manual_bce_over_valid_targets():
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0])
    target = torch.tensor([1.0, 0.0, NAN, 1.0])
    keep = torch.tensor([0, 1, 3])
    expected = F.binary_cross_entropy_with_logits(logits[keep], target[keep])
    torch.testing.assert_close(masked_loss("binary", logits, target), expected)


def test_binary_pos_weight_matches_manual_formula():
    logits = torch.tensor([0.3, -1.2, 2.0])
    target = torch.tensor([1.0, 0.0, 1.0])
    w = 3.0
    p = torch.sigmoid(logits)
    manual = -(w * target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    torch.testing.assert_close(Objective("binary", np.array([w]))(logits, target), manual)


def test_binary_int_targets_use_minus_one_as_missing():
    logits = torch.tensor([0.5, -0.5, 1.0])
    loss = masked_loss("binary", logits, torch.tensor([1, -1, 0]))
    expected = F.binary_cross_entropy_with_logits(logits[[0, 2]], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, expected)


def test_multiclass_matches_torch_cross_entropy_with_weights_and_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    target = torch.tensor([0, 2, -1, 1, 2, -1])
    weight = torch.tensor([0.5, 2.0, 1.5])
    expected = torch.nn.CrossEntropyLoss(weight=weight, ignore_index=-1)(logits, target)
    torch.testing.assert_close(Objective("multiclass", weight)(logits, target), expected)
    plain = torch.nn.CrossEntropyLoss(ignore_index=-1)(logits, target)
    torch.testing.assert_close(masked_loss("multiclass", logits, target), plain)


def test_multilabel_is_mean_bce_over_valid_entries():
    torch.manual_seed(1)
    logits = torch.randn(4, 3)
    target = torch.tensor([[1, 0, NAN], [0, 0, 1], [NAN, NAN, NAN], [1, 1, 0]])
    valid = ~torch.isnan(target)
    expected = F.binary_cross_entropy_with_logits(logits[valid], target[valid])
    torch.testing.assert_close(masked_loss("multilabel", logits, target), expected)


def test_regression_is_mse_over_valid_targets():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])
    target = torch.tensor([1.5, NAN, 2.0, 4.0])
    expected = ((pred[[0, 2, 3]] - target[[0, 2, 3]]) ** 2).mean()
    torch.testing.assert_close(masked_loss("regression", pred, target), expected)


CASES = {
    "binary": (torch.randn(4), torch.tensor([1.0, NAN, 0.0, 1.0])),
    "multiclass": (torch.randn(4, 3), torch.tensor([2, -1, 0, 1])),
    "multilabel": (torch.randn(4, 2), torch.tensor([[1.0, 0.0], [NAN, NAN], [0.0, 1.0], [1.0, 1.0]])),
    "regression": (torch.randn(4), torch.tensor([0.5, NAN, -1.0, 2.0])),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_masked_target_gets_exactly_zero_gradient(kind):
    logits, target = CASES[kind]
    logits = logits.clone().requires_grad_(True)
    masked_loss(kind, logits, target).backward()
    grad = logits.grad
    assert torch.all(grad[1] == 0), "sample 1 has no target and must get no gradient"
    assert torch.all(torch.isfinite(grad))
    assert grad[[0, 2, 3]].abs().sum() > 0


@pytest.mark.parametrize("kind", list(CASES))
def test_batch_without_any_target_gives_zero_loss_and_zero_gradient(kind):
    logits, target = CASES[kind]
    missing = torch.full_like(target, -1) if not target.is_floating_point() else torch.full_like(target, NAN)
    logits = logits.clone().requires_grad_(True)
    loss = masked_loss(kind, logits, missing)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(logits.grad == 0)


def test_shape_mismatch_explains_the_fix():
    with pytest.raises(ValueError, match=r"Squeeze"):
        masked_loss("binary", torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="Unknown head kind"):
        masked_loss("ordinal", torch.zeros(4), torch.zeros(4))


def test_regression_rejects_class_weight():
    with pytest.raises(ValueError, match="imbalance='none'"):
        Objective("regression", np.array([1.0]))


def test_class_weights_binary_multilabel_and_multiclass():
    y = np.array([0, 0, 0, 1, np.nan])
    np.testing.assert_allclose(class_weights_from_labels(y, "binary"), [3.0])
    ml = np.array([[1, 0], [0, 1], [0, 1], [0, np.nan]])
    np.testing.assert_allclose(class_weights_from_labels(ml, "multilabel"), [3.0, 0.5])
    mc = np.array([0, 0, 0, 1, 2, 2, -1])
    valid = mc[mc >= 0]
    reference = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=valid)
    np.testing.assert_allclose(class_weights_from_labels(mc, "multiclass"), reference, rtol=1e-6)
    np.testing.assert_allclose(class_weights_from_labels(mc, "multiclass", n_classes=4)[3], 1.0)


def test_class_weights_raise_without_both_classes_or_for_regression():
    with pytest.raises(ValueError, match="positives and negatives"):
        class_weights_from_labels(np.zeros(5), "binary")
    with pytest.raises(ValueError, match="regression"):
        class_weights_from_labels(np.zeros(5), "regression")


def test_check_targets_rejects_unknown_labels():
    check_targets(np.array([0.0, 1.0, np.nan]), "binary")
    check_targets(np.array([0, 3, -1]), "multiclass")
    with pytest.raises(ValueError, match=r"unexpected value\(s\) \[2.0\]"):
        check_targets(np.array([0, 1, 2]), "binary")
    with pytest.raises(ValueError, match="2-D"):
        check_targets(np.array([0, 1]), "multilabel")
    with pytest.raises(TypeError, match="numeric"):
        check_targets(np.array(["a", "b"]), "binary")


def test_logits_to_output():
    torch.testing.assert_close(logits_to_output("binary", torch.tensor([0.0])), torch.tensor([0.5]))
    probs = logits_to_output("multiclass", torch.randn(3, 4))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    x = torch.tensor([1.5, -2.0])
    torch.testing.assert_close(logits_to_output("regression", x), x)


def test_regression_rejects_integer_targets():
    with pytest.raises(TypeError, match="floating point"):
        check_targets(np.array([1, -2, 3]), "regression")
    with pytest.raises(TypeError, match="floating point"):
        masked_loss("regression", torch.zeros(3), torch.tensor([1, -2, 3]))
