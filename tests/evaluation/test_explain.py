"""Time-series attributions: Integrated Gradients completeness on an LSTM, agreement with SHAP's exact linear
explainer on a linear model, and the planted-signal sanity check."""

import numpy as np
import pytest
import shap
import torch
from torch import nn

from healthfusion.evaluation.explain import attribute_timeseries, model_forward
from healthfusion.models.encoders import LSTMEncoderConfig, MLPEncoderConfig
from healthfusion.models.hybrid import HybridConfig, HybridModel

T, V = 6, 3


def make_batch(n, seed=0, static=True):
    g = torch.Generator().manual_seed(seed)
    out = {"ts_values": torch.randn(n, T, V, generator=g), "ts_mask": torch.ones(n, T, V),
           "ts_delta": torch.zeros(n, T, V), "ts_lengths": torch.full((n,), T, dtype=torch.int64)}
    if static:
        out["static"] = torch.randn(n, 2, generator=g)
    return out


def lstm_model(seed=0):
    torch.manual_seed(seed)
    return HybridModel(HybridConfig(ts=LSTMEncoderConfig(n_variables=V, hidden_size=8),
                                    static=MLPEncoderConfig(in_dim=2), fc_hidden=(8,))).eval()


def test_integrated_gradients_completeness_on_lstm():
    model = lstm_model()
    x, bg = make_batch(4, seed=1), make_batch(12, seed=2)
    r = attribute_timeseries(model_forward(model), x, background=bg, variables=["a", "b", "c"],
                             method="integrated_gradients", n_samples=64, include_static=True)
    base = dict(x, ts_values=bg["ts_values"].mean(0, keepdim=True).expand(4, -1, -1),
                static=bg["static"].mean(0, keepdim=True).expand(4, -1))
    with torch.no_grad():
        delta = (model(x)["logits"] - model(base)["logits"]).numpy()
    total = r.values.sum(axis=(1, 2)) + r.static_values.sum(axis=1)
    np.testing.assert_allclose(total, delta, atol=2e-3 + 0.02 * np.abs(delta).max())
    assert r.values.shape == (4, T, V) and r.per_variable().shape == (4, V + 2)


def test_gradient_shap_is_reproducible_by_seed_and_leaves_numpy_alone():
    model = lstm_model()
    x, bg = make_batch(3, seed=1), make_batch(10, seed=2)

    def run(seed):
        return attribute_timeseries(model_forward(model), x, background=bg, variables=["a", "b", "c"],
                                    method="gradient_shap", n_samples=8, seed=seed).values

    np.random.seed(123)
    first = run(0)
    after = np.random.random()
    np.random.seed(999)  # another global state: the seed alone decides the draws
    np.testing.assert_array_equal(run(0), first)
    assert not np.array_equal(run(1), first)
    np.random.seed(123)
    run(0)
    assert np.random.random() == after  # the caller's numpy generator is restored


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(T * V, 1)

    def forward(self, batch):
        return self.lin(batch["ts_values"].flatten(1))


@pytest.mark.parametrize("method,n_samples,atol", [("integrated_gradients", 8, 1e-5), ("gradient_shap", 400, 0.08)])
def test_linear_model_matches_shap_linear_explainer(method, n_samples, atol):
    torch.manual_seed(0)
    model = Linear().eval()
    x, bg = make_batch(3, seed=3, static=False), make_batch(6, seed=4, static=False)
    r = attribute_timeseries(model, x, background=bg, variables=["a", "b", "c"], method=method, n_samples=n_samples)
    w = model.lin.weight.detach().numpy()[0]
    b = float(model.lin.bias.detach())
    reference = shap.LinearExplainer((w, b), bg["ts_values"].flatten(1).numpy())
    expected = reference.shap_values(x["ts_values"].flatten(1).numpy()).reshape(3, T, V)
    np.testing.assert_allclose(r.values, expected, atol=atol)
    if method == "gradient_shap":
        assert r.expected_value == pytest.approx(float(np.asarray(reference.expected_value).ravel()[0]), abs=1e-4)


def test_planted_signal_ranked_first():
    """An LSTM trained where only variable 'lactate' in the last hours decides the label explains with it first."""
    g = torch.Generator().manual_seed(0)
    n, names = 256, ["hr", "map", "lactate", "temp"]
    x = {"ts_values": torch.randn(n, 8, 4, generator=g), "ts_mask": torch.ones(n, 8, 4),
         "ts_delta": torch.zeros(n, 8, 4), "ts_lengths": torch.full((n,), 8, dtype=torch.int64)}
    y = (x["ts_values"][:, -3:, 2].mean(1) > 0).float()
    torch.manual_seed(0)
    model = HybridModel(HybridConfig(ts=LSTMEncoderConfig(n_variables=4, hidden_size=16), fc_hidden=(16,),
                                     dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x)["logits"], y)
        loss.backward()
        opt.step()
    model.eval()
    sub = {k: v[:24] for k, v in x.items()}
    bg = {k: v[100:140] for k, v in x.items()}
    r = attribute_timeseries(model_forward(model), sub, background=bg, variables=names, n_samples=16)
    ranking = r.global_importance()
    assert ranking.index[0] == "lactate", ranking
    windows = r.per_window(hours=4)
    assert windows.loc[4.0, "lactate"] > windows.loc[0.0, "lactate"]  # the signal lives in the last hours
    top = r.top_features(1)
    assert (top["feature"] == "lactate").mean() > 0.7


def test_bad_input_is_named():
    model = lstm_model()
    x, bg = make_batch(2), make_batch(4)
    with pytest.raises(ValueError, match="variables has 2 names"):
        attribute_timeseries(model_forward(model), x, background=bg, variables=["a", "b"])
    with pytest.raises(ValueError, match="Unknown attribution method"):
        attribute_timeseries(model_forward(model), x, background=bg, variables=["a", "b", "c"], method="deep")
    with pytest.raises(ValueError, match="background 'ts_values'"):
        attribute_timeseries(model_forward(model), x, background=dict(bg, ts_values=torch.zeros(4, T + 1, V)),
                             variables=["a", "b", "c"])
