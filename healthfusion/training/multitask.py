"""Inference with a :class:`~healthfusion.models.multitask.MultitaskModel`, and the name of its target arrays.

Training is the one :class:`~healthfusion.training.trainer.Trainer` with the
:class:`~healthfusion.training.losses.multitask.MultitaskObjective` loss term.

Example::

    preds = predict_multitask(model, test)      # {"predictions": {task: array}, "task_attention": ..., ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.multitask import MultitaskModel

TARGET_PREFIX = "target:"


def target_key(task: str) -> str:
    """Dataset key holding task ``task``'s targets."""
    return f"{TARGET_PREFIX}{task}"


def cluster_representations(model: MultitaskModel, data: ArrayDataset, task: str, batch_size: int = 256) -> np.ndarray:
    """``[n, task_dim]`` representations ``h`` of clustering task ``task`` for every row of ``data`` (eval mode, on
    the model's device)."""
    index = model.task_names.index(task)
    device = _device(model)
    was_training = model.training
    model.eval()
    chunks = []
    with torch.no_grad():
        for batch in data.iter_batches(batch_size, device=device):
            chunks.append(model(batch)["representations"][:, index].float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.task_dim), np.float32)


def predict_multitask(model: MultitaskModel, data: ArrayDataset, batch_size: int = 256,
                      removed: Sequence[str] = ()) -> dict[str, Any]:
    """Predictions of every task for every row of ``data`` (eval mode, no gradients, on the model's device).

    Parameters
    ----------
    removed : sequence of task names
        Tasks hidden from the others' attention (the attention ablation); their own predictions are still made.

    Returns
    -------
    dict with ``predictions`` ({task: [n] or [n, K]}, see :meth:`MultitaskModel.predictions`),
    ``representations`` [n, T, D], ``task_attention`` [n, T, T], ``self_weight`` [n, T], ``task_present`` [n, T].

    Raises
    ------
    KeyError
        On a removed name that is not a task.
    """
    names = model.task_names
    for r in removed:
        if r not in names:
            raise KeyError(f"Cannot remove unknown task {r!r}; tasks: {list(names)}.")
    device = _device(model)
    mask = torch.tensor([n in set(removed) for n in names], dtype=torch.bool, device=device) if removed else None
    model.eval()
    keys = ("representations", "task_attention", "self_weight", "task_present")
    acc: dict[str, list] = {k: [] for k in keys}
    preds: dict[str, list] = {n: [] for n in names}
    with torch.no_grad():
        for batch in data.iter_batches(batch_size, device=device):
            out = model(batch, removed=mask)
            for k in keys:
                acc[k].append(out[k].float().cpu().numpy() if out[k].is_floating_point() else out[k].cpu().numpy())
            for name, p in model.predictions(out["logits"]).items():
                preds[name].append(p.cpu().numpy())
    result: dict[str, Any] = {k: np.concatenate(v) for k, v in acc.items()}
    result["predictions"] = {n: np.concatenate(v) for n, v in preds.items()}
    return result



def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
