"""The supervised risk loss: BCE / cross-entropy / MSE by head kind, missing targets masked, optional class weights.

Example::

    term = SupervisedLoss("binary", class_weight=True)   # positives weighted n_negative / n_positive
    Trainer(TrainerConfig(max_epochs=5), loss=term).fit(model, train, val)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.training.losses import LossTerm, StepState
from healthfusion.training.monitoring import HEAD_METRIC, head_metric
from healthfusion.training.objectives import (
    Objective,
    check_head_kind,
    check_targets,
    class_weights_from_labels,
    logits_to_output,
    mean_from_terms,
)


def model_logits(out: Any) -> torch.Tensor:
    """The ``"logits"`` tensor of a model's output dict.

    Raises
    ------
    TypeError
        If the model did not return a dict with a ``"logits"`` tensor.
    """
    if not isinstance(out, Mapping) or not isinstance(out.get("logits"), torch.Tensor):
        got = f"a dict with keys {sorted(out)}" if isinstance(out, Mapping) else type(out).__name__
        raise TypeError(f"model.forward(batch) must return a dict with a 'logits' tensor; got {got}.")
    return out["logits"]


class SupervisedLoss(LossTerm):
    """Masked supervised loss of ``model(batch)["logits"]`` against ``batch["target"]``.

    Parameters
    ----------
    head_kind : {"binary", "multiclass", "multilabel", "regression"}, default "binary"
    class_weight : bool, default False
        Balanced weights from the training labels (see
        :func:`~healthfusion.training.objectives.class_weights_from_labels`).

    Validation values: ``val_loss`` (the same weighted loss) and the head's metric (``val_auroc``, ...).

    Raises
    ------
    ValueError
        In ``setup``: a train set without a ``"target"`` array or with labels that do not fit the head kind.
    """

    name = "supervised"

    def __init__(self, head_kind: str = "binary", class_weight: bool = False):
        super().__init__()
        self.head_kind = check_head_kind(head_kind)
        self.class_weight = class_weight
        self.objective = Objective(self.head_kind)
        self._checked = False

    def setup(self, model: nn.Module, train: ArrayDataset, state: StepState) -> None:
        check_dataset(train, "train", self.head_kind)
        weight = class_weights_from_labels(train[B.TARGET], self.head_kind) if self.class_weight else None
        self.objective = Objective(self.head_kind, weight).to(state.device)
        self._top_class = None
        if self.head_kind == "multiclass":
            y = train[B.TARGET].astype(np.float64)
            self._top_class = int(np.nanmax(y)) if not np.isnan(y).all() else -1
        self._checked = False

    def compute(self, model, batch, state) -> dict[str, Any]:
        target = batch[B.TARGET]
        logits = model_logits(model({k: v for k, v in batch.items() if k != B.TARGET}))
        if not self._checked:
            self._check_logits(logits)
        loss_sum, norm = self.objective.terms(logits, target)
        return {"loss": mean_from_terms(loss_sum, norm), "weight": norm}

    def _check_logits(self, logits: torch.Tensor) -> None:
        self._checked = True
        top = getattr(self, "_top_class", None)
        if self.head_kind == "multiclass" and logits.dim() == 2 and top is not None and top >= logits.shape[1]:
            raise ValueError(
                f"The train target has class id {top} but the model outputs {logits.shape[1]} "
                f"logits; build the model with at least {top + 1} classes."
            )

    def default_monitor(self) -> str:
        return HEAD_METRIC[self.head_kind]

    def validation_names(self) -> tuple[str, ...]:
        return ("val_loss", HEAD_METRIC[self.head_kind])

    def validate(self, model, data, state) -> dict[str, float]:
        outputs, loss = infer(model, data, self.head_kind, state, self.objective)
        return {"val_loss": loss, HEAD_METRIC[self.head_kind]: head_metric(self.head_kind, data[B.TARGET], outputs)}


def check_dataset(data: Any, name: str, kind: str) -> None:
    """Check that ``data`` is a non-empty ArrayDataset with a ``"target"`` fitting head ``kind``.

    Raises
    ------
    TypeError
        If ``data`` is not an ArrayDataset.
    ValueError
        If it is empty, has no ``"target"`` array or a target that does not fit ``kind``.
    """
    if not isinstance(data, ArrayDataset):
        raise TypeError(f"fit expects {name} as an ArrayDataset; got {type(data).__name__}.")
    if B.TARGET not in data:
        raise ValueError(f"The {name} dataset has no {B.TARGET!r} array; add it with ds.with_arrays(target=y).")
    if len(data) == 0:
        raise ValueError(f"The {name} dataset is empty (0 samples).")
    check_targets(data[B.TARGET], kind, name=f"{name} target")


@torch.no_grad()
def infer(model: nn.Module, data: ArrayDataset, kind: str, state: StepState,
          objective: Objective | None = None) -> tuple[np.ndarray, float | None]:
    """``(outputs, loss)`` of ``model`` on ``data`` in eval mode (the model's mode is restored).

    ``outputs``: float32 probabilities / values as :func:`logits_to_output` gives them ([n] or [n, K]); ``loss``:
    the objective's mean over valid targets (None without an objective or a ``"target"`` array).
    """
    was_training = model.training
    model.eval()
    chunks = []
    total = torch.zeros((), device=state.device)
    count = torch.zeros((), device=state.device)
    with_loss = objective is not None and B.TARGET in data
    try:
        for batch in data.iter_batches(state.eval_batch_size, device=state.device):
            target = batch.pop(B.TARGET, None)
            with state.autocast():
                logits = model_logits(model(batch)).float()
            if with_loss:
                loss_sum, norm = objective.terms(logits, target)
                total += loss_sum
                count += norm
            chunks.append(logits)
    finally:
        model.train(was_training)
    outputs = logits_to_output(kind, torch.cat(chunks)).cpu().numpy()
    loss = None
    if with_loss:
        n = count.item()
        loss = total.item() / n if n > 0 else float("nan")
    return outputs, loss
