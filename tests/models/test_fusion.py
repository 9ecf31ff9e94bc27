import pytest
import torch

from healthfusion.models import FUSION_KINDS, ConcatFusion, build_fusion

DIMS = {"ts": 6, "static": 4, "image": 5}


def _inputs(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    embeddings = {m: torch.randn(b, d, generator=g) for m, d in DIMS.items()}
    present = {
        "ts": torch.tensor([True, True, False, True]),
        "static": torch.tensor([True, False, False, True]),
        "image": torch.tensor([False, True, True, True]),
    }
    return embeddings, present


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_fusion_shapes_and_weights(kind):
    fusion = build_fusion(kind, DIMS, dim=8)
    embeddings, present = _inputs()
    fused, weights = fusion(embeddings, present)
    expected_dim = sum(DIMS.values()) + len(DIMS) if kind == "concat" else 8
    assert fused.shape == (4, expected_dim) and fusion.out_dim == expected_dim
    if kind == "concat":
        assert weights is None
    else:
        matrix = torch.stack([present[m] for m in DIMS], dim=1)
        assert weights.shape == (4, 3)
        torch.testing.assert_close(weights.sum(1), torch.ones(4))
        assert torch.all(weights[~matrix] == 0) and torch.all(weights[matrix] > 0)


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_absent_modality_does_not_influence_fusion(kind):
    fusion = build_fusion(kind, DIMS, dim=8)
    embeddings, present = _inputs()
    fused, weights = fusion(embeddings, present)
    changed = dict(embeddings)
    for m in DIMS:
        noise = torch.full_like(changed[m], float("nan"))
        changed[m] = torch.where(present[m][:, None], changed[m], noise)
    fused2, weights2 = fusion(changed, present)
    assert torch.equal(fused, fused2)
    assert weights is None or torch.equal(weights, weights2)


def test_concat_uses_missing_embedding_and_presence_flags():
    fusion = ConcatFusion(DIMS)
    with torch.no_grad():
        fusion.missing["static"].fill_(3.0)
    embeddings, present = _inputs()
    fused, _ = fusion(embeddings, present)
    static = fused[:, 6:10]
    assert torch.equal(static[1], torch.full((4,), 3.0))
    assert torch.equal(static[0], embeddings["static"][0])
    assert torch.equal(fused[:, -3:], torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 1], [1, 1, 1.0]]))


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_sample_without_any_modality_is_an_error(kind):
    fusion = build_fusion(kind, DIMS, dim=8)
    embeddings, present = _inputs()
    present["image"] = torch.tensor([False, True, False, True])
    with pytest.raises(ValueError, match=r"positions \[2\]"):
        fusion(embeddings, present)


def test_fusion_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown fusion"):
        build_fusion("sum", DIMS, 8)
    fusion = build_fusion("gated", DIMS, 8)
    embeddings, present = _inputs()
    present["ts"] = present["ts"].float()
    with pytest.raises(ValueError, match="bool"):
        fusion(embeddings, present)
