"""DANN (Ganin et al. 2016): a domain classifier sees the shared representation through a gradient-reversal
layer, so the encoder learns features that do not tell the domains apart.

The reversal strength follows ``weight * (2 / (1 + exp(-gamma * p)) - 1)`` over training progress ``p`` in
[0, 1] (:func:`dann_strength`), so alignment starts weak while the features are still random. The domain
classifier's accuracy on the training batches is logged every epoch (near 0.5: the domains look alike to it).

The model needs ``encode(batch) -> [B, D]`` and ``domain_logits(embedding, strength) -> [B]``
(:class:`~healthfusion.models.transfer.TransferModel`).

Example::

    terms = [SupervisedLoss("binary", class_weight=True), MMDLoss(1.0), DANNLoss(1.0)]
    Trainer(config, loss=terms).fit(model, train, val, sources={"source": src, "target": tgt})
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from healthfusion.training.losses import LossTerm, StepState
from healthfusion.training.losses.mmd import encoded, ramp


def dann_strength(progress: float, max_strength: float = 1.0, gamma: float = 10.0) -> float:
    """The DANN gradient-reversal schedule ``max_strength * (2 / (1 + exp(-gamma * progress)) - 1)``.

    Raises
    ------
    ValueError
        If ``progress`` is outside [0, 1] or ``max_strength``/``gamma`` is negative.
    """
    return ramp(progress, max_strength, gamma)


class DANNLoss(LossTerm):
    """Domain-classification loss (source = 0, target = 1) behind a scheduled gradient reversal.

    Parameters
    ----------
    weight : float, default 1.0
        Maximum gradient-reversal strength.
    gamma : float, default 10.0
        Steepness of :func:`dann_strength`.
    source, target : str, default "source", "target"
        Names of the two auxiliary sources.

    Logged per epoch: ``domain_accuracy`` and ``dann_strength``.

    Raises
    ------
    ValueError
        If ``weight`` or ``gamma`` is negative; in ``setup``, a model without ``domain_logits``.
    """

    name = "dann"

    def __init__(self, weight: float = 1.0, gamma: float = 10.0, source: str = "source", target: str = "target"):
        super().__init__()
        if weight < 0 or gamma < 0:
            raise ValueError(f"DANN weight and gamma must be >= 0; got {weight} and {gamma}.")
        self.weight, self.gamma = float(weight), float(gamma)
        self.sources = (source, target)

    def setup(self, model, train, state: StepState) -> None:
        if not hasattr(model, "domain_logits"):
            raise ValueError(f"The DANN term needs a model with domain_logits(embedding, strength); "
                             f"{type(model).__name__} has none.")

    def compute(self, model, batch, state) -> dict[str, Any]:
        zs, zt = encoded(model, state, self.sources[0]), encoded(model, state, self.sources[1])
        strength = dann_strength(state.progress, self.weight, self.gamma)
        logits = model.domain_logits(torch.cat([zs, zt]), strength).float()
        domain = torch.cat([torch.zeros(len(zs), device=logits.device), torch.ones(len(zt), device=logits.device)])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, domain)
        accuracy = ((logits > 0).float() == domain).float().mean()
        return {"loss": loss, "domain_accuracy": accuracy.detach(), "dann_strength": strength}
