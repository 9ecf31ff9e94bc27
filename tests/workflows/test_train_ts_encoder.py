"""A run config choosing the Transformer time-series encoder (``model.ts_encoder``) trains, saves and loads."""

import json

import pytest
import torch
import yaml

from healthfusion.data import synthetic
from healthfusion.models.base import load_network
from healthfusion.models.encoders.lstm import LSTMEncoderConfig
from healthfusion.models.encoders.transformer import TransformerEncoder, TransformerEncoderConfig
from healthfusion.workflows.common import make_featurizer
from healthfusion.workflows.config import ConfigError, load_run_config
from healthfusion.workflows.modeling import hybrid_config
from healthfusion.workflows.predict import predict_source
from healthfusion.workflows.train import run_training


def write_config(root, **model):
    cfg = {
        "name": "tiny-transformer", "out": str(root / "run"),
        "data": {"cohort": "cohort", "label": "mortality"},
        "features": {"modalities": ["ts", "static"]},
        "model": model,
        "training": {"max_epochs": 2, "batch_size": 32},
        "baselines": ["logistic_regression"],
        "evaluation": {"n_boot": 20},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root / "run.yaml"


def test_train_with_transformer_ts_encoder_saves_and_predicts(tmp_path):
    synthetic.write(tmp_path / "cohort", n_stays=150, seed=4)
    run = run_training(load_run_config(write_config(tmp_path, hidden=8, ts_encoder="transformer")))
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["ts"]["encoder"] == "transformer" and saved["ts"]["d_model"] == 8
    model, state = load_network(run / "model")
    assert isinstance(model.encoders["ts"], TransformerEncoder) and state is not None
    assert all(torch.isfinite(p).all() for p in model.parameters())
    frame = predict_source(run / "model", "synthetic", tmp_path / "new", n_stays=40, seed=9)
    assert frame.loc[frame["status"] == "ok", "probability"].between(0, 1).all()


def test_run_config_rejects_unknown_ts_encoder(tmp_path):
    with pytest.raises(ConfigError, match="ts_encoder"):
        load_run_config(write_config(tmp_path, ts_encoder="gru"))


def test_run_config_rejects_a_transformer_width_the_heads_do_not_divide(tmp_path):
    with pytest.raises(ConfigError, match="model.hidden must be a multiple of 4; got 10"):
        load_run_config(write_config(tmp_path, hidden=10, ts_encoder="transformer"))
    assert load_run_config(write_config(tmp_path, hidden=10)).model.hidden == 10  # the LSTM takes any width


def test_hybrid_config_sizes_the_transformer_and_names_bad_settings(tmp_path):
    cohort = synthetic.build(tmp_path / "c", n_stays=40, seed=1)
    config = load_run_config(write_config(tmp_path))
    feat = make_featurizer(config.features, "mortality").fit(cohort, cohort.stay_ids.tolist())
    ts = hybrid_config(feat, hidden=12, ts_encoder="transformer").ts
    assert isinstance(ts, TransformerEncoderConfig) and ts.d_model == 12 and ts.n_variables == feat.input_dims()["n_variables"]
    assert isinstance(hybrid_config(feat, hidden=12).ts, LSTMEncoderConfig)
    with pytest.raises(ValueError, match="multiple of 4; got hidden=10"):
        hybrid_config(feat, hidden=10, ts_encoder="transformer")
    with pytest.raises(ValueError, match="input_decay is an option of the LSTM"):
        hybrid_config(feat, ts_encoder="transformer", input_decay=True)
    with pytest.raises(ValueError, match="'lstm' or 'transformer', got 'gru'"):
        hybrid_config(feat, ts_encoder="gru")
