import pytest
import torch

from healthfusion.models import HEAD_KINDS, Head, head_predictions


@pytest.mark.parametrize(
    "kind,k,shape", [("binary", 1, (4,)), ("regression", 1, (4,)), ("multiclass", 3, (4, 3)), ("multilabel", 5, (4, 5))]
)
def test_head_shapes_and_predictions(kind, k, shape):
    head = Head(8, kind, k)
    logits = head(torch.randn(4, 8))
    assert logits.shape == shape
    pred = head_predictions(logits, kind)
    assert pred.shape == shape
    if kind == "multiclass":
        torch.testing.assert_close(pred.sum(-1), torch.ones(4))
    elif kind == "regression":
        assert torch.equal(pred, logits)
    else:
        assert torch.all((pred > 0) & (pred < 1))


@pytest.mark.parametrize("kind,k", [("binary", 2), ("regression", 3), ("multiclass", 1), ("multilabel", 0), ("ordinal", 1)])
def test_head_rejects_bad_kind_or_size(kind, k):
    with pytest.raises(ValueError):
        Head(8, kind, k)


def test_head_kinds():
    assert HEAD_KINDS == ("binary", "multiclass", "multilabel", "regression")
