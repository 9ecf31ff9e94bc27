"""One contract over every registered model type and fusion kind: shapes, round trip, determinism, bad input.

A new risk-model type (batch in, ``{"logits", "embedding"}`` out) adds a tiny config factory to TINY_CONFIGS; a
model type with other outputs (an encoder, a pretraining wrapper, a multitask or transfer model) names the test
module that checks its own save/load round trip in OWN_CONTRACT. The first test fails until one of them does.
"""

import importlib
import pkgutil
from pathlib import Path

import pytest
import torch

import healthfusion.models
from healthfusion.models import FUSION_KINDS, MODEL_REGISTRY, load_network

for _module in pkgutil.walk_packages(healthfusion.models.__path__, "healthfusion.models."):
    importlib.import_module(_module.name)  # every @register_model runs, whatever was imported before

TINY_CONFIGS = {"hybrid": lambda make_config, fusion: make_config(fusion)}
OWN_CONTRACT = {
    "encoder": "test_registry.py",
    "pretraining": "test_pretraining.py",
    "multitask": "test_multitask.py",
    "transfer_bilstm": "test_transfer.py",
}
CASES = [(t, f) for t in sorted(TINY_CONFIGS) for f in FUSION_KINDS]
PRESENT = {"ts": [True, False, True, True, True, False], "image": [False, True, True, False, True, True]}


def test_every_registered_type_has_a_contract():
    assert set(MODEL_REGISTRY) <= set(TINY_CONFIGS) | set(OWN_CONTRACT)
    here = Path(__file__).parent
    for model_type, module in OWN_CONTRACT.items():
        text = (here / module).read_text()
        assert "save_pretrained" in text and ("from_pretrained" in text or "load_network" in text or
                                              "load_encoder" in text), f"{module} lacks a round trip of {model_type}"


@pytest.fixture
def build(make_config):
    def _build(model_type, fusion, seed=0):
        torch.manual_seed(seed)
        cls = MODEL_REGISTRY[model_type]
        return cls(TINY_CONFIGS[model_type](make_config, fusion))

    return _build


@pytest.mark.parametrize("model_type,fusion", CASES)
def test_contract(model_type, fusion, build, make_batch, tmp_path):
    model = build(model_type, fusion)
    assert model.model_type == model_type
    batch = make_batch(**PRESENT)

    # determinism: same seed, same parameters and same training-mode outputs (dropout included)
    again = build(model_type, fusion)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    torch.manual_seed(1)
    first = model.train()(batch)["logits"]
    torch.manual_seed(1)
    assert torch.equal(first, again.train()(batch)["logits"])

    # shapes and finite outputs, training and eval
    for mode in (True, False):
        out = model.train(mode)(batch)
        assert out["logits"].shape[0] == 6 and out["embedding"].shape[0] == 6
        assert all(torch.isfinite(v).all() for v in out.values())

    # a backward pass reaches every parameter
    model.train()
    model(batch)["logits"].sum().backward()
    unreached = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unreached

    # bit-exact round trip
    model.eval()
    model.save_pretrained(tmp_path, preprocessing_state={"n": 1})
    loaded, state = load_network(tmp_path)
    assert state == {"n": 1} and type(loaded) is type(model)
    expected, got = model(batch), loaded(batch)
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    # bad input: an empty batch dict is a ValueError, not a KeyError
    with pytest.raises(ValueError):
        model({})
