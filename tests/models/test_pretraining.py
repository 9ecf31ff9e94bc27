"""Self-supervised objectives: corruption matches the featurizer's gridding, nothing removed leaks, losses agree
with reference computations."""

import numpy as np
import pytest
import torch

from healthfusion.features.compose import CohortFeaturizer
from healthfusion.models.encoders import (
    CNNEncoderConfig,
    CodesEncoderConfig,
    LSTMEncoderConfig,
    MLPEncoderConfig,
    TextEncoderConfig,
)
from healthfusion.models.pretraining import (
    PretrainingConfig,
    PretrainingModel,
    drop_ids,
    drop_observations,
    nt_xent,
)


def test_no_drop_reproduces_the_featurizer_grid(tiny_cohort):
    ids = tiny_cohort.stay_ids.tolist()
    data = CohortFeaturizer(modalities=["ts"]).fit(tiny_cohort, ids).transform(tiny_cohort, ids, with_target=False)
    batch = data.batch()
    values, mask, delta, removed = drop_observations(batch["ts_values"], batch["ts_mask"], batch["ts_lengths"], 0.0,
                                                     torch.Generator().manual_seed(0))
    assert not removed.any()
    assert torch.equal(mask, batch["ts_mask"])
    assert torch.allclose(values, batch["ts_values"])
    assert torch.allclose(delta, batch["ts_delta"], atol=1e-6)


def _reference_locf(values, kept):
    out = np.zeros_like(values)
    b, t, v = values.shape
    for i in range(b):
        for j in range(v):
            last = None
            for s in range(t):
                if kept[i, s, j]:
                    last = values[i, s, j]
                out[i, s, j] = 0.0 if last is None else last
    return out


def test_removed_values_are_gone_from_the_input():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(4, 10, 3, generator=g) < 0.5).float()
    raw = torch.randn(4, 10, 3, generator=g)
    values = torch.from_numpy(_reference_locf(raw.numpy(), mask.numpy().astype(bool)))
    lengths = torch.tensor([10, 10, 6, 10])
    new_values, new_mask, delta, removed = drop_observations(values, mask, lengths, 0.5,
                                                             torch.Generator().manual_seed(2))
    assert removed.any() and not removed[2, 6:].any()
    kept = (mask > 0) & ~removed
    assert torch.equal(new_mask, kept.float())
    assert np.allclose(new_values.numpy(), _reference_locf(values.numpy(), kept.numpy()))
    # a removed value can be changed at will without changing anything the encoder sees
    changed = values.clone()
    changed[removed] = 999.0
    again = drop_observations(changed, mask, lengths, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(again[0], new_values) and torch.equal(again[2], delta)


def test_nt_xent_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).numpy()
    losses = []
    for i in range(10):
        pos = (i + 5) % 10
        sims = np.array([z[i] @ z[k] / 0.5 for k in range(10) if k != i])
        losses.append(-(z[i] @ z[pos] / 0.5) + np.log(np.exp(sims).sum()))
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(float(np.mean(losses)), rel=1e-5)


def test_drop_ids_only_drops_real_ids():
    ids = torch.tensor([[3, 4, 0, 0], [1, 2, 5, 6]])
    kept, removed = drop_ids(ids, 0.5, torch.Generator().manual_seed(0))
    assert not removed[0, 2:].any()
    assert torch.equal(kept[removed], torch.zeros(int(removed.sum()), dtype=ids.dtype))
    assert torch.equal(kept[~removed], ids[~removed])


CASES = {
    "masked_value": LSTMEncoderConfig(n_variables=3, hidden_size=8, attention_dim=8, bidirectional=True),
    "masked_feature": MLPEncoderConfig(in_dim=5, hidden_sizes=(8,)),
    "masked_code": CodesEncoderConfig(vocab_size=20, embedding_dim=8),
    "masked_code_text": TextEncoderConfig(n_buckets=32, embedding_dim=8, hidden_sizes=(8,)),
    "contrastive": CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 8), out_dim=8),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_objective_trains_the_whole_encoder(case, make_batch):
    model = PretrainingModel(PretrainingConfig(encoder=CASES[case], mask_rate=0.4))
    assert model.objective == case.replace("_text", "")
    out = model(make_batch(), torch.Generator().manual_seed(0))
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"]) and int(out["n"]) > 0
    out["loss"].backward()
    no_grad = [n for n, p in model.encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []  # attention pooling included: the decoder sees the pooled vector too


def test_masked_value_loss_is_on_removed_entries_only(make_batch):
    model = PretrainingModel(PretrainingConfig(encoder=CASES["masked_value"], mask_rate=0.3))
    batch = make_batch()
    gen_state = torch.Generator().manual_seed(5)
    _, _, _, removed = drop_observations(batch["ts_values"], batch["ts_mask"], batch["ts_lengths"], 0.3,
                                         torch.Generator().manual_seed(5))
    out = model(batch, gen_state)
    assert int(out["n"]) == int(removed.sum())


def test_objective_must_fit_the_encoder():
    with pytest.raises(ValueError, match="does not apply"):
        PretrainingConfig(encoder=CASES["masked_feature"], objective="contrastive")


def test_missing_input_is_named(make_batch):
    model = PretrainingModel(PretrainingConfig(encoder=CASES["masked_feature"]))
    batch = make_batch()
    del batch["static"]
    with pytest.raises(ValueError, match="'static'"):
        model(batch, torch.Generator())


def test_save_load_round_trip(tmp_path, make_batch):
    from healthfusion.models import load_network

    model = PretrainingModel(PretrainingConfig(encoder=CASES["masked_value"]))
    model.save_pretrained(tmp_path / "p")
    loaded, _ = load_network(tmp_path / "p")
    a = model.eval()(make_batch(), torch.Generator().manual_seed(0))["loss"]
    b = loaded(make_batch(), torch.Generator().manual_seed(0))["loss"]
    assert torch.equal(a, b)
