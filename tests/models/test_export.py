"""healthfusion.models.export: the branch-free forward equals the hybrid's, and onnxruntime equals torch."""

import pytest
import torch

from healthfusion.data.synthetic import generate
from healthfusion.features.compose import CohortFeaturizer
from healthfusion.models import HybridModel, LSTMEncoderConfig
from healthfusion.models.encoders.transformer import TransformerEncoderConfig
from healthfusion.models.export import BranchFreeHybrid, ExportError, OnnxScorer, check_inputs, export_onnx
from healthfusion.workflows.modeling import build_hybrid

from .conftest import tiny_batch, tiny_hybrid_config

PRESENT = {  # B = 6; every row keeps at least one modality; row 2 has no time series, row 4 only static/image
    "ts": [True, True, False, True, False, True],
    "static": [True, False, False, True, True, True],
    "codes": [False, True, False, True, False, True],
    "text": [True, False, False, False, False, True],
    "image": [True, True, True, False, False, True],
}
TS = {
    "lstm": LSTMEncoderConfig(n_variables=3, hidden_size=8, attention_dim=8),
    "bilstm-2-last-decay": LSTMEncoderConfig(n_variables=3, hidden_size=8, num_layers=2, bidirectional=True,
                                             pooling="last", input_decay=True),
    "bilstm-mean": LSTMEncoderConfig(n_variables=3, hidden_size=8, bidirectional=True, pooling="mean"),
    "transformer": TransformerEncoderConfig(n_variables=3, d_model=8, num_heads=2),
}


def _model(ts: str, fusion: str) -> HybridModel:
    torch.manual_seed(0)
    return HybridModel(tiny_hybrid_config(fusion, ts=TS[ts])).eval()


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
@pytest.mark.parametrize("ts", list(TS))
def test_branch_free_forward_equals_the_model(ts, fusion):
    model = _model(ts, fusion)
    batch = tiny_batch(**PRESENT)
    batch["ts_values"][2] = float("nan")  # absent rows may hold anything
    batch["ts_lengths"][2] = 0
    expected = model(batch)["logits"]
    got = BranchFreeHybrid(model)(*check_inputs(model, batch))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_branch_free_keeps_the_state_dict_keys():
    model = _model("bilstm-2-last-decay", "concat")
    keys = set(model.state_dict())
    BranchFreeHybrid(model)
    assert set(model.state_dict()) == keys


@pytest.mark.parametrize("ts", ["bilstm-2-last-decay", "transformer"])
def test_onnxruntime_equals_torch_on_other_batch_sizes_and_lengths(ts, tmp_path):
    model = _model(ts, "attention")
    path = export_onnx(model, tiny_batch(**PRESENT), tmp_path / "model.onnx")
    scorer = OnnxScorer(path, model)
    other = tiny_batch(seed=3, **PRESENT)  # other values, lengths, and 5 steps instead of 7
    for key in ("ts_values", "ts_mask", "ts_delta"):
        other[key] = other[key][:, :5].contiguous()
    other["ts_lengths"] = other["ts_lengths"].clamp(max=5)
    for batch in (other, {k: v[:2] for k, v in other.items()}):
        expected = model(batch)["logits"].detach().numpy()
        assert abs(scorer.logits(batch) - expected).max() <= 1e-5


def test_onnxruntime_equals_torch_on_a_featurized_synthetic_cohort(tmp_path):
    cohort = generate(60, seed=0, image_size=16)
    ids = cohort.stay_ids.tolist()
    feat = CohortFeaturizer(("ts", "static", "codes", "text"), label="mortality").fit(cohort, ids[:40])
    data = feat.transform(cohort, ids[40:], with_target=False)
    torch.manual_seed(1)
    model = build_hybrid(feat, fusion="gated", hidden=8, bidirectional=True).eval()
    batch = data.batch()
    path = export_onnx(model, data.batch(list(range(4))), tmp_path / "model.onnx")
    got = OnnxScorer(path, model).logits(batch)
    assert got.shape == (20,)
    assert abs(got - model(batch)["logits"].detach().numpy()).max() <= 1e-5


def test_bad_input_is_refused_before_onnxruntime(tmp_path):
    model = _model("lstm", "concat")
    path = export_onnx(model, tiny_batch(**PRESENT), tmp_path / "model.onnx")
    scorer = OnnxScorer(path, model)
    batch = tiny_batch(**PRESENT)
    batch["codes"][1, 0] = 99
    with pytest.raises(ValueError, match="ids in"):
        scorer.logits(batch)
    nobody = tiny_batch(**{m: [False] + flags[1:] for m, flags in PRESENT.items()})
    with pytest.raises(ValueError, match="positions \\[0\\]"):
        scorer.logits(nobody)


def test_a_file_from_another_model_is_refused(tmp_path):
    path = export_onnx(_model("lstm", "concat"), tiny_batch(**PRESENT), tmp_path / "model.onnx")
    other = HybridModel(tiny_hybrid_config(image=None))
    with pytest.raises(ExportError, match="another model"):
        OnnxScorer(path, other)


def test_a_hugging_face_text_encoder_is_refused():
    model = _model("lstm", "concat")
    model.encoders["text"] = torch.nn.Identity()
    with pytest.raises(ExportError, match="no exportable form"):
        BranchFreeHybrid(model)
