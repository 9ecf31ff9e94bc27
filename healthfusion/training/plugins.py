"""Plug-ins: outside components that wrap the model, optimiser and data loader before the training loop starts.

Differential privacy is the motivating case: Opacus's ``PrivacyEngine.make_private(module=, optimizer=,
data_loader=, ...)`` returns a per-sample-gradient model, a noisy clipping optimiser and a Poisson-sampling loader,
and training must then run on exactly those three. A plug-in receives the fit's :class:`TrainingParts` once, after
the optimiser is built and before the first epoch (and before a checkpoint is restored), and returns the parts the
loop should use. The trainer imports no such library itself; the adapter that does lives with its feature.

Example::

    class MakePrivate(TrainingPlugin):
        def __init__(self, engine, **options):
            self.engine, self.options = engine, options

        def wrap(self, parts, trainer):
            model, optimizer, loader = self.engine.make_private(
                module=parts.model, optimizer=parts.optimizer, data_loader=parts.loader.to_torch(), **self.options)
            return TrainingParts(model, optimizer, loader)

    Trainer(config, plugins=[MakePrivate(PrivacyEngine(), noise_multiplier=1.0, max_grad_norm=1.0)]).fit(...)

The loop iterates ``parts.loader`` once per epoch (any iterable of batch dicts; ``len(loader)`` is used for the
progress display when available), calls the loss terms with ``parts.model`` and steps ``parts.optimizer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from healthfusion.training.trainer import Trainer


@dataclass
class TrainingParts:
    """What the loop trains with: ``model`` (an ``nn.Module``), ``optimizer`` and ``loader`` (an iterable of
    batch dicts per epoch; by default an :class:`~healthfusion.training.sampling.EpochLoader`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any


class TrainingPlugin:
    """Base class: ``wrap`` returns the parts unchanged; ``on_fit_end`` does nothing."""

    def wrap(self, parts: TrainingParts, trainer: Trainer) -> TrainingParts:
        """Return the parts the loop should use (called once per fit, before the first epoch)."""
        return parts

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called after the loop (e.g. to read a privacy accountant)."""
