"""Local Hugging Face text encoders on a tiny BERT these tests build and save themselves (nothing is downloaded)."""

import json
import socket
import sys

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")

from healthfusion.data.cohort import Cohort  # noqa: E402
from healthfusion.data.schema import CohortMeta, LabelSpec  # noqa: E402
from healthfusion.features import batch as B  # noqa: E402
from healthfusion.features.compose import CohortFeaturizer  # noqa: E402
from healthfusion.features.text import HFTokenTransformer, LocalModelError, import_transformers  # noqa: E402
from healthfusion.models.encoders.text_hf import HFTextEncoder, HFTextEncoderConfig  # noqa: E402
from healthfusion.models.hybrid import HybridConfig, HybridModel  # noqa: E402
from healthfusion.training.finetune import FinetuneConfig  # noqa: E402
from healthfusion.training.trainer import Trainer  # noqa: E402

WORDS = ("[PAD] [UNK] [CLS] [SEP] [MASK] the patient has chest pain and fever cough no history of knee surgery "
         "left right fracture rash stable").split()
MAX_LEN = 12


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """Folder with a randomly initialised 2-layer BERT (hidden 32) and a WordPiece tokenizer over ``WORDS``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})  # vocab=: v5 ignores vocab_file=
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


def _notes_cohort(n: int = 24) -> Cohort:
    ids = [f"s{i}" for i in range(n)]
    death = [i % 2 for i in range(n)]
    texts = ["patient has chest pain and fever" if d else "knee surgery no history of fracture" for d in death]
    stays = pd.DataFrame({"stay_id": ids, "patient_id": ids, "prediction_time": 0.0})
    keep = ids[1:]  # s0 has no note
    notes = pd.DataFrame({"stay_id": keep, "time": 0.0, "text": texts[1:]})
    labels = pd.DataFrame({"stay_id": ids, "death": death})
    return Cohort(stays, notes=notes, labels=labels, meta=CohortMeta(name="notes", labels=[LabelSpec("death", "binary")]))


def _encode(folder, texts):
    tr = HFTokenTransformer(str(folder), max_length=MAX_LEN)
    tr.vocab_size_ = len(tr.tokenizer())
    out = tr.encode(texts)
    return torch.from_numpy(out["ids"]), torch.from_numpy(out["mask"])


def test_tokenizer_uses_the_saved_vocabulary(tiny_bert):
    ids, mask = _encode(tiny_bert, ["the patient has fever", ""])
    assert ids.shape == mask.shape == (2, MAX_LEN)
    lookup = {w: i for i, w in enumerate(WORDS)}
    expected = [lookup[w] for w in ("[CLS]", "the", "patient", "has", "fever", "[SEP]")]
    assert ids[0, :6].tolist() == expected  # no [UNK]: the vocabulary was really loaded
    assert mask[0].tolist() == [1] * 6 + [0] * (MAX_LEN - 6)
    assert mask[1].sum() == 2  # [CLS] [SEP] of the empty text


def test_shapes_pooling_and_padding_invariance(tiny_bert):
    enc = HFTextEncoder(HFTextEncoderConfig(path=str(tiny_bert))).eval()
    ids, mask = _encode(tiny_bert, ["patient has chest pain", "knee surgery left", "rash"])
    out = enc(ids, mask)
    assert out.shape == (3, 32) and enc.out_dim == 32
    # mean pooling over real tokens: extra padding changes nothing
    pad = torch.zeros(3, 5, dtype=torch.long)
    torch.testing.assert_close(enc(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1)), out)
    # reference: masked mean of the last hidden states computed by hand
    hidden = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state
    n = int(mask[2].sum())
    torch.testing.assert_close(out[2], hidden[2, :n].mean(0))
    cls = HFTextEncoder(HFTextEncoderConfig(path=str(tiny_bert), pooling="cls")).eval()
    torch.testing.assert_close(cls(ids, mask), hidden[:, 0])


def test_deterministic_and_offline(tiny_bert, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    ids, mask = _encode(tiny_bert, ["patient has chest pain", "fever"])
    a = HFTextEncoder(HFTextEncoderConfig(path=str(tiny_bert))).eval()
    b = HFTextEncoder(HFTextEncoderConfig(path=str(tiny_bert))).eval()
    torch.testing.assert_close(a(ids, mask), a(ids, mask), rtol=0, atol=0)
    torch.testing.assert_close(a(ids, mask), b(ids, mask), rtol=0, atol=0)


def test_featurizer_puts_ids_and_mask_in_the_batch(tiny_bert):
    cohort = _notes_cohort(6)
    ids = list(cohort.stay_ids)
    feat = CohortFeaturizer(modalities=("text",), label="death",
                            transformers={"text": HFTokenTransformer(str(tiny_bert), max_length=MAX_LEN)})
    ds = feat.fit(cohort, ids).transform(cohort, ids)
    assert ds[B.TEXT].shape == ds[B.TEXT_MASK].shape == (6, MAX_LEN)
    assert ds[B.present_key("text")].tolist() == [False] + [True] * 5
    assert feat.input_dims() == {"text_vocab": len(WORDS)}
    restored = CohortFeaturizer.from_state(json.loads(json.dumps(feat.get_state())))
    again = restored.transform(cohort, ids)
    for key in ds:
        np.testing.assert_array_equal(ds[key], again[key])


def _fit_hybrid(folder, freeze=False, finetune=None, epochs=2):
    cohort = _notes_cohort()
    ids = list(cohort.stay_ids)[1:]  # s0 has no note: a text-only model cannot score it
    feat = CohortFeaturizer(modalities=("text",), label="death",
                            transformers={"text": HFTokenTransformer(str(folder), max_length=MAX_LEN)})
    ds = feat.fit(cohort, ids).transform(cohort, ids)
    torch.manual_seed(0)
    model = HybridModel(HybridConfig(text=HFTextEncoderConfig(path=str(folder), freeze=freeze), fc_hidden=(8,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer({"max_epochs": epochs, "batch_size": 8, "lr": 0.01, "finetune": finetune}).fit(model, ds)
    return model, before, ds


def _changed(model, before, prefix):
    return [k for k, v in model.state_dict().items() if k.startswith(prefix) and not torch.equal(v, before[k])]


@pytest.mark.parametrize("freeze, finetune", [(True, None), (False, FinetuneConfig(strategy="linear_probe",
                                                                                    modules=("encoders.text",)))])
def test_frozen_encoder_weights_do_not_change(tiny_bert, freeze, finetune):
    model, before, _ = _fit_hybrid(tiny_bert, freeze=freeze, finetune=finetune)
    assert _changed(model, before, "encoders.text") == []
    assert _changed(model, before, "head")  # the top did train


def test_fine_tuned_encoder_trains_and_round_trips(tiny_bert, tmp_path):
    model, before, ds = _fit_hybrid(tiny_bert, epochs=1)
    assert _changed(model, before, "encoders.text.model.encoder")
    model.save_pretrained(tmp_path / "m")
    loaded = HybridModel.from_pretrained(tmp_path / "m")
    assert isinstance(loaded.config.text, HFTextEncoderConfig)
    batch = ds.batch(np.arange(len(ds)))
    batch.pop(B.TARGET)
    model.eval()
    torch.testing.assert_close(loaded.eval()(batch)["logits"], model(batch)["logits"], rtol=0, atol=0)


def test_missing_folder_and_files_are_named(tiny_bert, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(LocalModelError, match="no-such-model.*does not exist"):
        HFTextEncoder(HFTextEncoderConfig(path=str(missing)))
    with pytest.raises(LocalModelError, match="does not exist"):
        HFTokenTransformer("bert-base-uncased").tokenizer()  # a hub name is never looked up
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LocalModelError, match=r"empty.*lacks config \(config\.json\)"):
        HFTextEncoder(HFTextEncoderConfig(path=str(empty)))
    with pytest.raises(LocalModelError, match=r"lacks tokenizer \(tokenizer\.json"):
        HFTokenTransformer(str(empty)).tokenizer()
    (empty / "config.json").write_text((tiny_bert / "config.json").read_text())
    with pytest.raises(LocalModelError, match=r"lacks weights \(model\.safetensors"):
        HFTextEncoder(HFTextEncoderConfig(path=str(empty)))


def test_bad_inputs(tiny_bert):
    enc = HFTextEncoder(HFTextEncoderConfig(path=str(tiny_bert)))
    ids, mask = _encode(tiny_bert, ["fever"])
    with pytest.raises(ValueError, match="text_mask"):
        enc(ids, None)
    with pytest.raises(ValueError, match="same"):
        enc(ids, mask[:, :3])
    with pytest.raises(ValueError, match=f"0..{len(WORDS) - 1}"):
        enc(ids + 100, mask)
    model = HybridModel(HybridConfig(text=HFTextEncoderConfig(path=str(tiny_bert))))
    with pytest.raises(ValueError, match="text_mask"):
        model({B.TEXT: ids})


def test_missing_transformers_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'pip install "healthfusion\[text\]"'):
        import_transformers()


def test_gradual_unfreezing_reaches_the_language_model_from_the_top(tiny_bert):
    from healthfusion.training.finetune import FineTuner

    model = HybridModel(HybridConfig(text=HFTextEncoderConfig(path=str(tiny_bert))))
    tuner = FineTuner(model, FinetuneConfig(strategy="gradual_unfreeze", modules=("encoders.text",)))
    tuner.start_epoch(0)
    assert not any(p.requires_grad for p in model.encoders["text"].parameters())
    tuner.start_epoch(1)
    trainable = [n for n, p in model.encoders["text"].named_parameters() if p.requires_grad]
    assert trainable and all(".layer.1.output" in n for n in trainable)  # the last transformer layer's output
    tuner.restore()
    assert all(p.requires_grad for p in model.parameters())


def test_train_config_uses_the_local_model_as_text_encoder(tiny_bert, tmp_path):
    """`healthfusion train` with features.text_model: notes tokenized for the local model, the model's weights
    in the saved hybrid, frozen when model.text_freeze."""
    import yaml

    from healthfusion.models.base import load_network
    from healthfusion.workflows.config import load_run_config
    from healthfusion.workflows.train import run_training

    _notes_cohort(80).save(tmp_path / "cohort")
    cfg = {"name": "notes", "out": str(tmp_path / "run"), "data": {"cohort": "cohort", "label": "death"},
           "features": {"modalities": ["text"], "text_model": str(tiny_bert), "text_max_length": MAX_LEN},
           "model": {"hidden": 8, "text_freeze": True, "text_pooling": "cls"},
           "training": {"max_epochs": 1, "batch_size": 16}, "baselines": [], "evaluation": {"n_boot": 20, "audit": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    run = run_training(load_run_config(tmp_path / "run.yaml"))
    model, state = load_network(run / "model")
    text = model.config.text
    assert text.encoder == "hf" and text.freeze and text.pooling == "cls" and text.path == str(tiny_bert)
    assert "HFTokenTransformer" in json.dumps(state) or "model_path" in json.dumps(state)
