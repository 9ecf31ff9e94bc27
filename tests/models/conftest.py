"""Tiny synthetic batches and configs shared by the torch model tests (OMP_WAIT_POLICY is set in tests/conftest.py)."""

import pytest
import torch

from healthfusion.models import (
    CNNEncoderConfig,
    CodesEncoderConfig,
    HybridConfig,
    LSTMEncoderConfig,
    MLPEncoderConfig,
    TextEncoderConfig,
)

SIZES = {"B": 6, "T": 7, "V": 3, "F": 5, "L": 4, "VOCAB": 20, "BUCKETS": 32, "C": 1, "HW": 16}


def tiny_hybrid_config(fusion: str = "concat", **overrides) -> HybridConfig:
    """A HybridConfig using all five modalities with hidden sizes around 8."""
    s = SIZES
    fields = dict(
        ts=LSTMEncoderConfig(n_variables=s["V"], hidden_size=8, attention_dim=8),
        static=MLPEncoderConfig(in_dim=s["F"], hidden_sizes=(8,)),
        codes=CodesEncoderConfig(vocab_size=s["VOCAB"], embedding_dim=8),
        text=TextEncoderConfig(n_buckets=s["BUCKETS"], embedding_dim=8, hidden_sizes=(8,)),
        image=CNNEncoderConfig(in_channels=s["C"], image_size=s["HW"], channels=(4, 8), out_dim=8),
        fusion=fusion,
        fusion_dim=8,
        fc_hidden=(16,),
        dropout=0.1,
    )
    fields.update(overrides)
    return HybridConfig(**fields)


def tiny_batch(seed: int = 0, **present) -> dict[str, torch.Tensor]:
    """A batch holding every modality; ``present`` maps modality -> list of bools (flags omitted otherwise)."""
    s = SIZES
    g = torch.Generator().manual_seed(seed)
    b, t, v = s["B"], s["T"], s["V"]
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    valid = (torch.arange(t)[None, :] < lengths[:, None]).float()[:, :, None]
    mask = (torch.rand(b, t, v, generator=g) < 0.6).float() * valid
    batch = {
        "index": torch.arange(b),
        "ts_values": torch.randn(b, t, v, generator=g) * mask,
        "ts_mask": mask,
        "ts_delta": torch.rand(b, t, v, generator=g) * valid,
        "ts_lengths": lengths,
        "static": torch.randn(b, s["F"], generator=g),
        "codes": torch.randint(0, s["VOCAB"], (b, s["L"]), generator=g),
        "text": torch.randint(0, s["BUCKETS"], (b, s["L"] * 2), generator=g),
        "image": torch.randn(b, s["C"], s["HW"], s["HW"], generator=g),
    }
    for m, flags in present.items():
        batch[f"{m}_present"] = torch.tensor(flags, dtype=torch.bool)
    return batch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def make_config():
    """Factory: ``make_config(fusion="concat", **overrides) -> HybridConfig`` with all five modalities."""
    return tiny_hybrid_config


@pytest.fixture
def make_batch():
    """Factory: ``make_batch(seed=0, ts=[...bools], ...) -> dict`` batch with all five modalities."""
    return tiny_batch
