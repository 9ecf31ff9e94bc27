import pytest
import torch
from pydantic import ValidationError

from healthfusion.models import FUSION_KINDS, HybridConfig, HybridModel, LSTMEncoderConfig, MLPEncoderConfig

PRESENT = {  # B = 6; every row keeps at least one modality
    "ts": [True, True, False, True, False, True],
    "static": [True, False, False, True, True, True],
    "codes": [False, True, False, True, False, True],
    "text": [True, False, False, False, False, True],
    "image": [True, True, True, False, False, True],
}


@pytest.mark.parametrize("fusion", FUSION_KINDS)
def test_forward_keys_and_shapes(fusion, make_config, make_batch):
    model = HybridModel(make_config(fusion))
    out = model(make_batch(**PRESENT))
    assert out["logits"].shape == (6,)
    assert out["embedding"].shape == (6, model.embedding_dim) == (6, 16)
    assert out["ts_attention"].shape == (6, 7)
    if fusion == "concat":
        assert "modality_weights" not in out
    else:
        assert out["modality_weights"].shape == (6, 5)
        expected = torch.tensor([PRESENT[m] for m in model.modalities]).T
        assert torch.equal(out["modality_weights"] > 0, expected)


@pytest.mark.parametrize("head,k,shape", [("multiclass", 3, (6, 3)), ("multilabel", 4, (6, 4)), ("regression", 1, (6,))])
def test_head_kinds(head, k, shape, make_config, make_batch):
    out = HybridModel(make_config(head=head, n_outputs=k))(make_batch())
    assert out["logits"].shape == shape


def test_ts_attention_sums_to_one_and_zero_on_padding_and_absent_rows(make_config, make_batch):
    batch = make_batch(**PRESENT)
    attn = HybridModel(make_config()).eval()(batch)["ts_attention"]
    present = batch["ts_present"]
    torch.testing.assert_close(attn[present].sum(1), torch.ones(int(present.sum())))
    padding = torch.arange(7)[None, :] >= batch["ts_lengths"][:, None]
    assert torch.all(attn[padding] == 0) and torch.all(attn[~present] == 0)


@pytest.mark.parametrize("fusion", FUSION_KINDS)
@pytest.mark.parametrize("train", [False, True])
def test_absent_modalities_do_not_influence_output(fusion, train, make_config, make_batch):
    model = HybridModel(make_config(fusion)).train(train)
    batch = make_batch(**PRESENT)
    changed = make_batch(seed=1, **PRESENT)  # different inputs everywhere ...
    keys = {"ts": ["ts_values", "ts_mask", "ts_delta", "ts_lengths"], "static": ["static"], "codes": ["codes"],
            "text": ["text"], "image": ["image"]}
    for m, flags in PRESENT.items():  # ... then restore them where the modality is present
        for key in keys[m]:
            changed[key][torch.tensor(flags)] = batch[key][torch.tensor(flags)]
    changed["ts_lengths"][~changed["ts_present"]] = 0  # even invalid lengths are ignored when absent
    torch.manual_seed(5)
    out1 = model(batch)
    torch.manual_seed(5)
    out2 = model(changed)
    for key in out1:
        assert torch.equal(out1[key], out2[key]), key


def test_missing_presence_flag_means_present(make_config, make_batch):
    model = HybridModel(make_config("attention")).eval()
    batch = make_batch()
    flagged = dict(batch, **{f"{m}_present": torch.ones(6, dtype=torch.bool) for m in PRESENT})
    assert torch.equal(model(batch)["logits"], model(flagged)["logits"])


def test_bad_batches_raise_clear_errors(make_config, make_batch):
    model = HybridModel(make_config())
    with pytest.raises(ValueError, match=r"no 'image'"):
        model({k: v for k, v in make_batch().items() if k != "image"})
    with pytest.raises(ValueError, match=r"ts_present must be \[6\] bool"):
        model(dict(make_batch(), ts_present=torch.ones(6)))
    nothing = {m: [True] + [False] * 5 for m in PRESENT}
    with pytest.raises(ValueError, match=r"positions \[1, 2, 3, 4, 5\]"):
        model(make_batch(**nothing))
    short = make_batch()
    short["static"] = short["static"][:4]
    with pytest.raises(ValueError, match="disagree"):
        model(short)


def test_encode_returns_per_modality_embeddings(make_config, make_batch):
    model = HybridModel(make_config())
    embeddings = model.encode(make_batch(**PRESENT))
    assert list(embeddings) == ["ts", "static", "codes", "text", "image"]
    for m, h in embeddings.items():
        assert h.shape == (6, model.encoders[m].out_dim)
        assert torch.all(h[~torch.tensor(PRESENT[m])] == 0)


def test_subset_of_modalities_and_modality_absent_for_whole_batch(make_batch):
    config = HybridConfig(ts=LSTMEncoderConfig(n_variables=3, hidden_size=8, pooling="mean"),
                          static=MLPEncoderConfig(in_dim=5, hidden_sizes=(8,)), fusion="gated", fc_hidden=())
    model = HybridModel(config)
    assert model.modalities == ("ts", "static")
    batch = make_batch(ts=[False] * 6)
    out = model(batch)
    assert out["logits"].shape == (6,) and torch.all(out["ts_attention"] == 0)
    assert torch.equal(out["modality_weights"], torch.tensor([[0.0, 1.0]] * 6))


def test_deterministic_with_fixed_seed(make_config, make_batch):
    torch.manual_seed(42)
    a = HybridModel(make_config("attention"))
    torch.manual_seed(42)
    b = HybridModel(make_config("attention"))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    batch = make_batch(**PRESENT)
    torch.manual_seed(7)
    out_a = a.train()(batch)["logits"]
    torch.manual_seed(7)
    out_b = b.train()(batch)["logits"]
    assert torch.equal(out_a, out_b)


def test_input_gradients_reach_image_and_ts_values(make_config, make_batch):
    model = HybridModel(make_config("attention")).eval()
    batch = make_batch(**PRESENT)
    for key in ("image", "ts_values"):
        batch[key].requires_grad_(True)
    model(batch)["logits"].sum().backward()
    for key, flag in (("image", "image_present"), ("ts_values", "ts_present")):
        grad = batch[key].grad
        present = batch[flag]
        assert grad.flatten(1)[present].abs().sum(1).min() > 0, key
        assert torch.all(grad[~present] == 0), key


def test_config_validation():
    with pytest.raises(ValidationError, match="at least one modality"):
        HybridConfig()
    with pytest.raises(ValidationError, match="Extra inputs"):
        HybridConfig(static=MLPEncoderConfig(in_dim=3), fusion_layers=2)
    with pytest.raises(ValidationError, match="n_outputs >= 2"):
        HybridConfig(static=MLPEncoderConfig(in_dim=3), head="multiclass")
    with pytest.raises(ValidationError):
        HybridConfig(static=MLPEncoderConfig(in_dim=3), fusion="sum")
    with pytest.raises(TypeError, match="HybridConfig"):
        HybridModel(MLPEncoderConfig(in_dim=3))
