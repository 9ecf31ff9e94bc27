"""Tiny federated helpers shared by the tests and the Flower process script: a logistic-regression module and sites
drawn from one linear rule with shifted inputs."""

import numpy as np
from torch import nn

from healthfusion.features.dataset import ArrayDataset
from healthfusion.federated.client import Site


class TinyLogistic(nn.Module):
    def __init__(self, d: int = 3):
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, batch):
        return {"logits": self.linear(batch["static"]).squeeze(-1)}


def make_site(name: str, n: int, shift: float, seed: int, val: bool = False) -> Site:
    """A site of ``n`` training and ``n // 2`` test samples (and with ``val``, ``n // 2`` validation samples, drawn
    after the others so that the training and test draws do not depend on it)."""
    rng = np.random.default_rng(seed)

    def draw(m):
        x = rng.normal(shift, 1.0, (m, 3)).astype(np.float32)
        y = (x @ np.array([1.5, -1.0, 0.5]) - 0.5 * shift + rng.normal(0, 0.3, m) > 0).astype(np.float32)
        return ArrayDataset({"static": x, "target": y})

    train, test = draw(n), draw(n // 2)
    return Site(name, train, test, draw(n // 2) if val else None)
