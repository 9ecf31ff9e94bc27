"""Pretrained encoder folders and the local registry: exact round trips, listing, describing, clear errors."""

import json

import pytest
import torch

from healthfusion.models import HybridModel, ModelLoadError
from healthfusion.models.encoders import (
    CNNEncoder,
    CNNEncoderConfig,
    CodesEncoder,
    CodesEncoderConfig,
    LSTMEncoder,
    LSTMEncoderConfig,
    MLPEncoder,
    MLPEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)
from healthfusion.models.registry import (
    CARD_FILE,
    ENV_VAR,
    ModelCard,
    PretrainedEncoder,
    describe_encoder,
    list_encoders,
    load_encoder,
    load_into_hybrid,
    load_pretrained_encoder,
    registry_root,
    save_encoder,
)

ENCODERS = {
    "lstm": lambda: LSTMEncoder(LSTMEncoderConfig(n_variables=3, hidden_size=8, attention_dim=8, bidirectional=True)),
    "mlp": lambda: MLPEncoder(MLPEncoderConfig(in_dim=5, hidden_sizes=(8,))),
    "bag": lambda: CodesEncoder(CodesEncoderConfig(vocab_size=20, embedding_dim=8)),
    "hashed_bag": lambda: TextEncoder(TextEncoderConfig(n_buckets=32, embedding_dim=8, hidden_sizes=(8,))),
    "cnn": lambda: CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=16, channels=(4, 8), out_dim=8)),
}


def _inputs(kind, batch):
    if kind == "lstm":
        return batch["ts_values"], batch["ts_mask"], batch["ts_delta"], batch["ts_lengths"]
    return (batch[{"mlp": "static", "bag": "codes", "hashed_bag": "text", "cnn": "image"}[kind]],)


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_round_trip_is_exact(kind, tmp_path, make_batch):
    enc = ENCODERS[kind]()
    with torch.no_grad():  # non-default weights and buffers
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    enc.eval()
    folder = save_encoder(enc, tmp_path / "enc", card={"objective": "masked_value", "data": {"source": "synthetic"}},
                          preprocessing_state={"variables": ["HR"]})
    wrapped, card, prep = load_pretrained_encoder(folder)
    loaded = wrapped.encoder
    assert type(loaded) is type(enc)
    assert loaded.config == enc.config
    original, restored = enc.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    batch = make_batch()
    out_a, out_b = enc(*_inputs(kind, batch)), loaded(*_inputs(kind, batch))
    out_a, out_b = (out_a[0], out_b[0]) if isinstance(out_a, tuple) else (out_a, out_b)
    assert torch.equal(out_a, out_b)
    assert card.objective == "masked_value" and card.created is not None
    assert prep == {"variables": ["HR"]}
    assert wrapped.modality == {"lstm": "ts", "mlp": "static", "bag": "codes", "hashed_bag": "text",
                                "cnn": "image"}[kind]


def test_registry_names_env_and_listing(tmp_path, monkeypatch):
    root = tmp_path / "reg"
    monkeypatch.setenv(ENV_VAR, str(root))
    assert registry_root() == root
    assert registry_root(tmp_path / "other") == tmp_path / "other"
    assert list_encoders() == []
    save_encoder(ENCODERS["lstm"](), "ts-enc", card=ModelCard(objective="masked_value", data={"source": "physionet2012"}))
    save_encoder(ENCODERS["mlp"](), "static-enc", card={"objective": "masked_feature"})
    rows = list_encoders()
    assert [r["name"] for r in rows] == ["static-enc", "ts-enc"]
    assert {r["name"]: r["modality"] for r in rows} == {"static-enc": "static", "ts-enc": "ts"}
    assert rows[1]["data"] == "physionet2012"
    info = describe_encoder("ts-enc")
    assert info["card"]["name"] == "ts-enc" and info["encoder"]["n_variables"] == 3
    assert set(info["files"]) == {"config.json", "model.safetensors", CARD_FILE}
    assert isinstance(load_encoder("ts-enc"), LSTMEncoder)
    with pytest.raises(ValueError, match="already holds a model"):
        save_encoder(ENCODERS["lstm"](), "ts-enc")
    save_encoder(ENCODERS["lstm"](), "ts-enc", overwrite=True)


def test_unknown_name_lists_what_exists(tmp_path):
    save_encoder(ENCODERS["mlp"](), "static-enc", root=tmp_path)
    with pytest.raises(ModelLoadError, match="static-enc") as err:
        load_encoder("nope", root=tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(ValueError, match="Invalid model name"):
        save_encoder(ENCODERS["mlp"](), "bad name!", root=tmp_path)


def test_card_from_other_weights_is_detected(tmp_path):
    a = save_encoder(ENCODERS["mlp"](), tmp_path / "a")
    b = save_encoder(ENCODERS["mlp"](), tmp_path / "b")
    (a / CARD_FILE).write_text((b / CARD_FILE).read_text())
    with pytest.raises(ModelLoadError, match="belongs to other weights"):
        load_encoder(a)
    (a / CARD_FILE).unlink()
    with pytest.raises(ModelLoadError, match="model_card.json not found"):
        load_encoder(a)


def test_missing_weights_named(tmp_path):
    folder = save_encoder(ENCODERS["bag"](), tmp_path / "c")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors not found"):
        load_encoder(folder)


def test_listing_survives_a_broken_folder(tmp_path):
    save_encoder(ENCODERS["bag"](), "good", root=tmp_path)
    (tmp_path / "broken").mkdir()
    rows = {r["name"]: r for r in list_encoders(tmp_path)}
    assert rows["good"]["error"] == "" and "config.json not found" in rows["broken"]["error"]


def test_not_an_encoder_rejected(tmp_path, make_config):
    with pytest.raises(TypeError, match="Expected one of the encoders"):
        save_encoder(torch.nn.Linear(2, 2), tmp_path / "x")
    HybridModel(make_config()).save_pretrained(tmp_path / "hyb")
    (tmp_path / "hyb" / CARD_FILE).write_text(json.dumps({}))
    with pytest.raises(ModelLoadError, match="not a pretrained encoder"):
        load_encoder(tmp_path / "hyb")


def test_load_into_hybrid(tmp_path, make_config, make_batch):
    model = HybridModel(make_config())
    enc = LSTMEncoder(model.config.ts)
    with torch.no_grad():
        for p in enc.parameters():
            p.fill_(0.01)
    save_encoder(enc, tmp_path / "ts")
    load_into_hybrid(model, "ts", tmp_path / "ts")
    for name, value in enc.state_dict().items():
        assert torch.equal(model.encoders["ts"].state_dict()[name], value)
    with pytest.raises(ValueError, match="cannot serve modality 'static'"):
        load_into_hybrid(model, "static", tmp_path / "ts")
    save_encoder(ENCODERS["lstm"](), tmp_path / "bi")  # bidirectional: another architecture
    with pytest.raises(ValueError, match="bidirectional"):
        load_into_hybrid(model, "ts", tmp_path / "bi")


def test_wrapper_shares_parameters():
    enc = ENCODERS["mlp"]()
    wrapped = PretrainedEncoder.from_encoder(enc)
    assert wrapped.encoder is enc
