"""save_pretrained / from_pretrained / load_network: bit-exact round trips and a clear error for each broken folder."""

import json
import pickle

import pytest
import torch

from healthfusion.models import (
    FUSION_KINDS,
    MODEL_REGISTRY,
    HybridModel,
    ModelLoadError,
    PretrainedModel,
    load_network,
    register_model,
)

PREP = {"scaler": {"mean": [0.5, 1.0], "std": [1.0, 2.0]}, "variables": ["HR", "Lactate"]}


def _assert_same(a, b, batch):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
    a.eval(), b.eval()
    out_a, out_b = a(batch), b(batch)
    assert out_a.keys() == out_b.keys()
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key


@pytest.fixture
def saved(tmp_path, make_config, make_batch):
    model = HybridModel(make_config("attention"))
    model.train()(make_batch())  # update batch-norm running statistics so buffers are non-trivial
    model.save_pretrained(tmp_path / "m", preprocessing_state=PREP)
    return model, tmp_path / "m"


@pytest.mark.parametrize("fusion", FUSION_KINDS)
def test_round_trip_is_bit_exact(fusion, tmp_path, make_config, make_batch):
    model = HybridModel(make_config(fusion))
    model.save_pretrained(tmp_path / fusion)
    assert sorted(p.name for p in (tmp_path / fusion).iterdir()) == ["config.json", "model.safetensors"]
    loaded = HybridModel.from_pretrained(tmp_path / fusion)
    assert isinstance(loaded, HybridModel) and not loaded.training
    assert loaded.config == model.config
    _assert_same(model, loaded, make_batch())


def test_load_pretrained_returns_preprocessing_state(saved, make_batch):
    model, path = saved
    loaded, state = load_network(path)
    assert state == PREP
    _assert_same(model, loaded, make_batch())
    assert loaded.fingerprint() == model.fingerprint()
    config = json.loads((path / "config.json").read_text())
    prep = json.loads((path / "preprocessing.json").read_text())
    assert config["model_type"] == "hybrid" and config["format_version"] == 1
    assert config["model_fingerprint"] == prep["model_fingerprint"] == model.fingerprint()
    assert isinstance(PretrainedModel.from_pretrained(path), HybridModel)


def test_resave_without_state_removes_stale_preprocessing(saved):
    model, path = saved
    model.save_pretrained(path)
    assert load_network(path)[1] is None


def test_missing_folder_and_files(tmp_path, saved):
    _, path = saved
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_network(tmp_path / "nope")
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors not found"):
        load_network(path)
    (path / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json not found"):
        load_network(path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.0])
def test_truncated_weights(saved, keep):
    _, path = saved
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="truncated or corrupted"):
        load_network(path)


def test_flipped_weight_bytes_are_detected(saved):
    _, path = saved
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="changed after saving"):
        load_network(path)


def test_edited_config_dims_name_the_tensor_and_shapes(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config["static"]["in_dim"] = 9
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"'encoders\.static\.layers\.0\.weight': saved shape \(8, 5\) .* \(8, 9\)"):
        load_network(path)


def test_edited_config_without_shape_change_is_detected(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config["dropout"] = 0.5
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="changed after saving"):
        load_network(path)


def test_preprocessing_from_another_model_is_detected(saved, tmp_path, make_config):
    _, path = saved
    other = HybridModel(make_config("attention"))  # same config, other weights
    other.save_pretrained(tmp_path / "other", preprocessing_state={"scaler": "other"})
    (path / "preprocessing.json").write_bytes((tmp_path / "other" / "preprocessing.json").read_bytes())
    with pytest.raises(ModelLoadError, match="belongs to another model"):
        load_network(path)


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"model_type": "transformer9"}, "unknown model_type 'transformer9'"),
        ({"format_version": 99}, "upgrade healthfusion"),
        ({"format_version": None}, "no integer 'format_version'"),
        ({"hidden": 3}, r"not a valid HybridConfig: hidden: Extra inputs"),
    ],
)
def test_bad_config_fields(saved, edit, message):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config.update(edit)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message):
        load_network(path)


def test_config_not_json(saved):
    _, path = saved
    (path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_network(path)


def test_from_pretrained_checks_the_model_type(saved, monkeypatch):
    _, path = saved

    class Other(PretrainedModel):
        pass

    monkeypatch.setitem(MODEL_REGISTRY, "other_test_type", Other)
    with pytest.raises(ModelLoadError, match="not a Other"):
        Other.from_pretrained(path)
    with pytest.raises(ValueError, match="already registered"):
        register_model("hybrid")(Other)


def test_unserialisable_preprocessing_state_is_rejected(tmp_path, make_config):
    model = HybridModel(make_config())
    with pytest.raises(ValueError, match="NaN"):
        model.save_pretrained(tmp_path, preprocessing_state={"mean": float("nan")})
    with pytest.raises(ValueError, match="tolist"):
        model.save_pretrained(tmp_path, preprocessing_state={"mean": torch.zeros(2)})


def test_no_pickle_on_save_or_load(saved, tmp_path, monkeypatch):
    model, path = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "dump", "dumps"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch, "save", forbidden)
    model.save_pretrained(tmp_path / "again", preprocessing_state=PREP)
    load_network(tmp_path / "again")
    assert issubclass(ModelLoadError, ValueError)
