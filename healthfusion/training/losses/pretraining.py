"""The self-supervised pretraining objectives of a :class:`~healthfusion.models.pretraining.PretrainingModel`
(masked values, masked features, masked codes, contrastive images) as one loss term.

No labels are read (a ``"target"`` array is ignored). The model corrupts its input with a generator this term
owns, seeded from the fit's seed; validation corruption is drawn from a generator reset to ``seed + 1`` every epoch,
so the validation losses of different epochs are comparable. A batch in which the objective has nothing to predict
(``n == 0``) is skipped without an optimiser step.

Example::

    Trainer(TrainerConfig(max_epochs=10, weight_decay=0.0, grad_clip=1.0), loss=PretrainingLoss()).fit(
        model, train_ds, val_ds)
"""

from __future__ import annotations

from typing import Any

import torch

from healthfusion.features import batch as B
from healthfusion.training.losses import LossTerm, StepState


class PretrainingLoss(LossTerm):
    """The model's own objective: ``model(batch, generator) -> {"loss", "n"}``, weighted by ``n`` per batch.

    Validation value: ``val_loss`` (the objective on the validation set, mean over predicted entries).

    Raises
    ------
    TypeError
        In ``setup``, if the model is not a PretrainingModel.
    ValueError
        In ``setup``, if the training set has fewer than 2 rows.
    """

    name = "pretraining"

    def setup(self, model, train, state: StepState) -> None:
        from healthfusion.models.pretraining import PretrainingModel

        if not isinstance(model, PretrainingModel):
            raise TypeError(f"The pretraining loss trains a PretrainingModel, got {type(model).__name__}.")
        if len(train) < 2:
            raise ValueError(f"Pretraining needs at least 2 training rows, got {len(train)}.")
        self.generator = torch.Generator().manual_seed(state.seed)

    def compute(self, model, batch, state) -> dict[str, Any]:
        out = model({k: v for k, v in batch.items() if k != B.TARGET}, self.generator)
        return {"loss": out["loss"], "weight": out["n"], "skip": int(out["n"]) == 0}

    def validation_names(self) -> tuple[str, ...]:
        return ("val_loss",)

    @torch.no_grad()
    def validate(self, model, data, state) -> dict[str, float]:
        generator = torch.Generator().manual_seed(state.seed + 1)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0.0
        try:
            for batch in data.iter_batches(state.eval_batch_size, device=state.device):
                batch.pop(B.TARGET, None)
                with state.autocast():
                    out = model(batch, generator)
                n = float(out["n"])
                total += float(out["loss"].detach()) * n
                count += n
        finally:
            model.train(was_training)
        return {"val_loss": total / count if count > 0 else float("nan")}

    def get_extra_state(self) -> dict:
        """The training generator's state (saved in checkpoints with the term's state dict)."""
        return {"generator": self.generator.get_state()} if hasattr(self, "generator") else {}

    def set_extra_state(self, state: dict) -> None:
        if state.get("generator") is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
