"""The multitask objective of a :class:`~healthfusion.models.multitask.MultitaskModel` as a loss term: weighted
per-task losses with missing labels masked, and a clustering objective.

Data
----
An :class:`~healthfusion.features.dataset.ArrayDataset` with the model's inputs and, per supervised task ``t``, an
array ``target:<t>`` (:func:`~healthfusion.training.multitask.target_key`) encoded like ``target`` in
:mod:`healthfusion.features.batch` (float 0/1 or value with NaN missing; int class with -1 missing; float multi-hot
with NaN rows missing). Clustering tasks need no target.

Loss
----
Per supervised task: the masked loss of :func:`~healthfusion.training.objectives.masked_loss_terms` over rows with
a valid label *and* at least one of the task's modalities. Regression targets are standardised with the task's
``target_shift``/``target_scale``. Per clustering task: the DEC objective ``KL(P || Q)`` with the sharpened target
``p_ik ∝ q_ik^2 / sum_i q_ik`` (computed without gradient), plus ``balance * KL(mean_i q_i || uniform)`` against
collapse onto one cluster; it starts after ``cluster_warmup_epochs``, when the centroids are set by k-means on the
task's representations of the training rows.

Weighting: ``"fixed"`` sums ``w_t * L_t`` with the given weights; ``"uncertainty"`` (Kendall, Gal & Cipolla 2018)
learns a log-variance ``s_t`` per supervised task and sums ``w_t * (exp(-s_t) * L_t + s_t)``; a clustering task
keeps its fixed weight (the DEC loss shrinks towards 0 as assignments sharpen, which would drive its learned weight
``exp(-s_t)`` without bound). A task with no valid label in a batch contributes nothing at all (also no ``s_t``
term), so masking all of a task's labels removes its gradient.

Validation: ``val_loss`` is the early-stopping criterion, the ``sum`` of the supervised tasks' validation losses or
their ``relative`` mean ``mean_t L_t / L_t(first epoch)``; ``val_loss:<task>`` each task's loss and
``weight:<task>`` its effective weight.

Example::

    term = MultitaskObjective(MultitaskObjectiveConfig(weighting="uncertainty"), weights={"death": 2.0})
    Trainer(TrainerConfig(max_epochs=20, grad_clip=5.0), [term.early_stopping(5, model.config.tasks)],
            loss=term).fit(
        model, train, val)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.cluster import KMeans
from torch import nn

from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.multitask import MultitaskModel, TaskSpec
from healthfusion.training.callbacks import EarlyStopping
from healthfusion.training.losses import LossTerm, StepState
from healthfusion.training.multitask import cluster_representations, target_key
from healthfusion.training.objectives import masked_loss_terms, mean_from_terms


class MultitaskObjectiveConfig(BaseModel):
    """Settings of :class:`MultitaskObjective` (unknown keys are an error).

    Attributes
    ----------
    weighting : "uncertainty" | "fixed", default "uncertainty"
        How the task losses are weighted: learned homoscedastic-uncertainty weights, or each task's fixed
        ``weight``.
    cluster_warmup_epochs : int, default 2
        Epochs before the clustering objective starts (and its centroids are set by k-means).
    cluster_balance : float, default 1.0
        Weight of the cluster-balance term.
    criterion : "sum" | "relative", default "sum"
        Early-stopping criterion (``val_loss``): ``sum`` of the supervised tasks' validation losses, or their
        ``relative`` mean ``mean_t L_t / L_t(first epoch)``, so that every task counts alike whatever the scale of
        its loss.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    weighting: Literal["uncertainty", "fixed"] = "uncertainty"
    cluster_warmup_epochs: int = Field(2, ge=0)
    cluster_balance: float = Field(1.0, ge=0)
    criterion: Literal["sum", "relative"] = "sum"


def dec_loss(log_q: torch.Tensor, balance: float = 1.0) -> torch.Tensor:
    """DEC clustering loss of soft assignments ``log_q`` ``[B, K]`` (log-probabilities): ``KL(P || Q)`` with the
    sharpened target P (no gradient through P), plus ``balance * KL(mean q || uniform)``. 0-dim tensor; 0 for B=0."""
    if log_q.shape[0] == 0:
        return log_q.sum() * 0.0
    q = log_q.exp()
    with torch.no_grad():
        weight = q.pow(2) / q.sum(dim=0, keepdim=True).clamp_min(1e-12)
        p = weight / weight.sum(dim=1, keepdim=True)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(dim=1).mean()
    mean_q = q.mean(dim=0)
    k = log_q.shape[1]
    spread = (mean_q * (torch.log(mean_q.clamp_min(1e-12)) + math.log(k))).sum()
    return kl + balance * spread


class MultitaskLoss(nn.Module):
    """Weighted sum of per-task losses with per-task masking of missing labels (see the module docstring).

    Parameters
    ----------
    tasks : sequence of TaskSpec
    weights : mapping of task name to float, optional
        Fixed per-task weights (default 1); with ``"uncertainty"`` they multiply the learned weighting.
    weighting : "uncertainty" | "fixed"
    cluster_balance : float

    Shapes
    ------
    forward(out, batch, use_clustering=True) -> (total 0-dim, {task: per-task loss 0-dim, unweighted, detached})

    Raises
    ------
    ValueError
        If a supervised task's target is missing from the batch, or shapes do not match its head.
    """

    def __init__(self, tasks, weights: Mapping[str, float] | None = None, weighting: str = "uncertainty",
                 cluster_balance: float = 1.0):
        super().__init__()
        self.tasks: tuple[TaskSpec, ...] = tuple(tasks)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - {t.name for t in self.tasks})
        if unknown:
            raise ValueError(f"Loss weights name unknown task(s) {unknown}; tasks: {[t.name for t in self.tasks]}.")
        if weighting not in ("uncertainty", "fixed"):
            raise ValueError(f"weighting must be 'uncertainty' or 'fixed', got {weighting!r}.")
        self.weights = {t.name: float(weights.get(t.name, 1.0)) for t in self.tasks}
        self.weighting = weighting
        self.cluster_balance = cluster_balance
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks))) if weighting == "uncertainty" else None

    def task_loss(self, task: TaskSpec, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                  present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, n_valid)`` of one task over the rows where it is present (loss 0, attached, when none)."""
        if task.kind == "clustering":
            rows = present.nonzero().flatten()
            return dec_loss(logits[rows], self.cluster_balance), present.sum().to(logits.dtype)
        key = target_key(task.name)
        if key not in batch:
            raise ValueError(f"The batch has no {key!r} for task {task.name!r}; add the task's labels to the dataset.")
        target = batch[key]
        if task.kind == "regression":
            target = (target.float() - task.target_shift) / task.target_scale
        target = _mask_rows(target, present)
        total, normaliser = masked_loss_terms(task.kind, logits, target)
        return mean_from_terms(total, normaliser), normaliser

    def forward(self, out: dict[str, Any], batch: dict[str, torch.Tensor], use_clustering: bool = True):
        total = None
        parts: dict[str, torch.Tensor] = {}
        for i, task in enumerate(self.tasks):
            if task.kind == "clustering" and not use_clustering:
                continue
            loss, n_valid = self.task_loss(task, out["logits"][task.name], batch, out["task_present"][:, i])
            parts[task.name] = loss.detach()
            has = (n_valid > 0).to(loss.dtype)
            if self.log_vars is not None and task.kind != "clustering":
                s = self.log_vars[i]
                term = (torch.exp(-s) * loss + s) * has
            else:
                term = loss * has
            term = self.weights[task.name] * term
            total = term if total is None else total + term
        if total is None:
            total = next(iter(out["logits"].values())).sum() * 0.0
        return total, parts

    def task_weights(self) -> dict[str, float]:
        """Effective weight of each task's loss now (``w_t * exp(-s_t)`` under uncertainty weighting)."""
        if self.log_vars is None:
            return dict(self.weights)
        factors = torch.exp(-self.log_vars.detach()).tolist()
        return {t.name: self.weights[t.name] * (1.0 if t.kind == "clustering" else f)
                for t, f in zip(self.tasks, factors, strict=True)}


def _mask_rows(target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``target`` with rows where ``present`` is False marked missing (NaN / -1)."""
    keep = present if target.dim() == 1 else present[:, None]
    if target.is_floating_point():
        return torch.where(keep, target, torch.full_like(target, float("nan")))
    return torch.where(keep, target, torch.full_like(target, -1))


def _init_centroids(model: MultitaskModel, data: ArrayDataset, seed: int) -> None:
    for task in model.config.tasks:
        if task.kind != "clustering":
            continue
        reps = cluster_representations(model, data, task.name)
        k = task.n_outputs
        if len(reps) < k:
            raise ValueError(f"Task {task.name!r}: {len(reps)} training rows cannot form {k} clusters.")
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(reps)
        with torch.no_grad():
            model.heads[task.name].centroids.copy_(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))


def evaluate_loss(model: MultitaskModel, loss_fn: MultitaskLoss, data: ArrayDataset, batch_size: int,
                  use_clustering: bool, device: torch.device | str | None = None) -> dict[str, float]:
    """Mean per-task loss (unweighted) over ``data``, batch-size weighted, and ``"total"``: the sum over supervised
    tasks (the early-stopping criterion; the clustering loss when no task is supervised)."""
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    with torch.no_grad():
        for batch in data.iter_batches(batch_size, device=device):
            _, parts = loss_fn(model(batch), batch, use_clustering=use_clustering)
            size = len(batch["index"])
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * size
            n += size
    out = {k: v / max(n, 1) for k, v in sums.items()}
    supervised = [t.name for t in model.config.tasks if t.kind != "clustering"]
    out["total"] = sum(out[t] for t in supervised) if supervised else sum(out.values())
    return out


class MultitaskObjective(LossTerm):
    """The multitask loss as a loss term (see the module docstring).

    Parameters
    ----------
    config : MultitaskObjectiveConfig, optional
    weights : mapping of task name to float, optional
        Fixed per-task loss weights (default 1 each).

    Raises
    ------
    TypeError
        In ``setup``, if the model is not a MultitaskModel.
    ValueError
        In ``setup``, if a supervised task's ``target:<task>`` array is missing; at the end of the warm-up, if a
        clustering task has fewer training rows than clusters.
    """

    name = "multitask"

    def __init__(self, config: MultitaskObjectiveConfig | None = None, weights: Mapping[str, float] | None = None):
        super().__init__()
        self.config = config or MultitaskObjectiveConfig()
        self.task_loss_weights = dict(weights or {})
        self.loss_fn: MultitaskLoss | None = None
        self.reference: dict[str, float] | None = None

    def setup(self, model, train: ArrayDataset, state: StepState) -> None:
        if not isinstance(model, MultitaskModel):
            raise TypeError(f"The multitask loss trains a MultitaskModel, got {type(model).__name__}.")
        for task in model.config.tasks:
            if task.kind != "clustering" and target_key(task.name) not in train:
                raise ValueError(f"Training data has no {target_key(task.name)!r} array for task {task.name!r}.")
        cfg = self.config
        self.tasks = tuple(model.config.tasks)
        self.loss_fn = MultitaskLoss(self.tasks, self.task_loss_weights, cfg.weighting, cfg.cluster_balance)
        self._fit = {"model": model, "train": train, "seed": state.seed}  # a dict: not registered as submodules
        self.has_clustering = any(t.kind == "clustering" for t in self.tasks)
        self.supervised = [t.name for t in self.tasks if t.kind != "clustering"]
        self.use_clustering = False
        self.reference = None

    def on_epoch_start(self, state: StepState) -> None:
        warmup = self.config.cluster_warmup_epochs
        self.use_clustering = self.has_clustering and state.epoch >= warmup
        if self.has_clustering and state.epoch == warmup:
            _init_centroids(self._fit["model"], self._fit["train"], self._fit["seed"])

    def compute(self, model, batch, state) -> dict[str, Any]:
        loss, _ = self.loss_fn(model(batch), batch, use_clustering=self.use_clustering)
        return {"loss": loss, "weight": torch.tensor(float(len(next(iter(batch.values())))))}

    def validation_names(self) -> tuple[str, ...]:
        return ("val_loss", *(f"val_loss:{t.name}" for t in self.tasks), *(f"weight:{t.name}" for t in self.tasks))

    def validate(self, model, data, state) -> dict[str, float]:
        losses = evaluate_loss(model, self.loss_fn, data, state.eval_batch_size, self.use_clustering, state.device)
        if self.config.criterion == "relative" and self.supervised:
            self.reference = self.reference or {t: max(losses[t], 1e-12) for t in self.supervised}
            criterion = float(np.mean([losses[t] / self.reference[t] for t in self.supervised]))
        else:
            criterion = losses["total"]
        # without a supervised task the criterion means something only once clustering has started
        if not (self.supervised or self.use_clustering or not self.has_clustering):
            criterion = float("nan")
        out = {"val_loss": criterion, **{f"val_loss:{k}": v for k, v in losses.items() if k != "total"}}
        out.update({f"weight:{k}": v for k, v in self.loss_fn.task_weights().items()})
        return out

    def early_stopping(self, patience: int, tasks: tuple[TaskSpec, ...]) -> EarlyStopping:
        """Early stopping on ``val_loss`` (improvements must exceed 1e-6) that, with a clustering task among
        ``tasks``, never stops before the clustering objective has had its own ``patience`` epochs."""
        clustering = any(t.kind == "clustering" for t in tasks)
        return EarlyStopping(monitor="val_loss", mode="min", patience=patience, min_delta=1e-6,
                             min_epochs=self.config.cluster_warmup_epochs + patience if clustering else 0)

    def get_extra_state(self) -> dict:
        return {"reference": self.reference}

    def set_extra_state(self, state: dict) -> None:
        self.reference = state.get("reference")
