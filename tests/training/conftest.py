"""Tiny models and synthetic data for the training tests (CPU, a few hundred samples).

OMP_WAIT_POLICY=PASSIVE is set by tests/conftest.py before torch loads."""

import numpy as np
import pytest
import torch
from torch import nn

from healthfusion.features.dataset import ArrayDataset


class TinyNet(nn.Module):
    """MLP on ``batch["static"]``; logits [B] when ``n_out`` is None, else [B, n_out]."""

    def __init__(self, n_in: int, n_out: int | None = None, hidden: int = 8, dropout: float = 0.0):
        super().__init__()
        self.n_out = n_out
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out or 1)
        )

    def forward(self, batch):
        z = self.net(batch["static"])
        return {"logits": z[:, 0] if self.n_out is None else z}


def planted_binary(n: int = 300, n_features: int = 5, seed: int = 0) -> ArrayDataset:
    """Binary target drawn from a logistic model on the first two features (Bayes AUROC about 0.9)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    logit = 2.5 * x[:, 0] - 2.0 * x[:, 1]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return ArrayDataset({"static": x, "target": y})


@pytest.fixture(autouse=True)
def _small_torch():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_net():
    return TinyNet


@pytest.fixture
def planted():
    return planted_binary
