"""Tiny federated fixtures: a logistic-regression module and sites drawn from one linear rule with shifted inputs."""

import numpy as np
import pytest
import torch
from torch import nn

from healthfusion.features.dataset import ArrayDataset
from healthfusion.federated.client import Site


class TinyLogistic(nn.Module):
    def __init__(self, d: int = 3):
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, batch):
        return {"logits": self.linear(batch["static"]).squeeze(-1)}


def make_site(name: str, n: int, shift: float, seed: int) -> Site:
    rng = np.random.default_rng(seed)

    def draw(m):
        x = rng.normal(shift, 1.0, (m, 3)).astype(np.float32)
        y = (x @ np.array([1.5, -1.0, 0.5]) - 0.5 * shift + rng.normal(0, 0.3, m) > 0).astype(np.float32)
        return ArrayDataset({"static": x, "target": y})

    return Site(name, draw(n), draw(n // 2))


@pytest.fixture
def tiny_sites():
    return [make_site("a", 60, 0.0, 1), make_site("b", 40, 0.5, 2), make_site("c", 30, -0.5, 3)]


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return TinyLogistic()
