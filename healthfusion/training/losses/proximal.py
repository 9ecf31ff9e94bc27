"""FedProx's proximal term (Li et al., 2020): ``mu / 2 * ||w - w_0||^2`` over the model's trainable parameters,
where ``w_0`` are the weights at the start of the fit (a federated site's round starts from the global weights).

Composed with the supervised term it keeps a site's local update near the global model::

    Trainer(config, loss=[SupervisedLoss("binary"), ProximalLoss(mu=0.01)]).local_round(model, train, weights)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from healthfusion.features.dataset import ArrayDataset
from healthfusion.training.losses import LossTerm, StepState


class ProximalLoss(LossTerm):
    """``mu / 2 * sum ||p - p_0||^2`` over trainable parameters; ``p_0`` snapshotted in :meth:`setup`.

    Parameters
    ----------
    mu : float
        Proximal coefficient (>= 0; 0 adds nothing).

    Raises
    ------
    ValueError
        If ``mu`` is negative.
    """

    name = "proximal"

    def __init__(self, mu: float):
        super().__init__()
        if mu < 0:
            raise ValueError(f"The proximal coefficient mu must be >= 0; got {mu}.")
        self.mu = float(mu)
        self._anchor: list[tuple[nn.Parameter, torch.Tensor]] = []

    def setup(self, model: nn.Module, train: ArrayDataset, state: StepState) -> None:
        self._anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def compute(self, model: nn.Module, batch: dict[str, torch.Tensor], state: StepState) -> dict[str, Any]:
        if not self._anchor:
            raise ValueError("ProximalLoss.compute was called before setup; let the Trainer run it.")
        sq = sum(((p - a.to(p.device)) ** 2).sum() for p, a in self._anchor)
        return {"loss": 0.5 * self.mu * sq, "proximal_distance": sq.detach()}
