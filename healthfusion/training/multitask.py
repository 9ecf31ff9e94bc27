"""Training of :class:`~healthfusion.models.multitask.MultitaskModel`: the multitask loss and a seeded loop with
early stopping on the validation loss.

Data
----
An :class:`~healthfusion.features.dataset.ArrayDataset` with the model's inputs and, per supervised task ``t``, an
array ``target:<t>`` encoded like ``target`` in :mod:`healthfusion.features.batch` (float 0/1 or value with NaN
missing; int class with -1 missing; float multi-hot with NaN rows missing). Clustering tasks need no target.

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
``exp(-s_t)`` without bound). A task with no valid label in a
batch contributes nothing at all (also no ``s_t`` term), so masking all of a task's labels removes its gradient.

Example::

    history = fit_multitask(model, train, val, MultitaskTrainingConfig(max_epochs=20, seed=0))
    preds = predict_multitask(model, test)      # {"predictions": {task: array}, "task_attention": ..., ...}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.cluster import KMeans
from torch import nn

from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.multitask import MultitaskModel, TaskSpec
from healthfusion.training.callbacks import BestWeights
from healthfusion.training.config import torch_threads
from healthfusion.training.objectives import masked_loss_terms, mean_from_terms

log = logging.getLogger(__name__)

TARGET_PREFIX = "target:"


def target_key(task: str) -> str:
    """Dataset key holding task ``task``'s targets."""
    return f"{TARGET_PREFIX}{task}"


class MultitaskTrainingConfig(BaseModel):
    """Settings of :func:`fit_multitask` (unknown keys are an error).

    Attributes
    ----------
    max_epochs : int, default 30
    batch_size : int, default 64
    lr : float, default 1e-3
    weight_decay : float, default 1e-4
    patience : int, default 5
        Stop after this many epochs without a lower validation loss; the best epoch's weights are restored.
    seed : int, default 0
        Seeds torch, the batch order and k-means.
    weighting : "uncertainty" | "fixed", default "uncertainty"
    cluster_warmup_epochs : int, default 2
        Epochs before the clustering objective starts (and its centroids are set by k-means).
    cluster_balance : float, default 1.0
        Weight of the cluster-balance term.
    grad_clip : float or None, default 5.0
    num_threads : int or None, default None
        ``torch.set_num_threads`` during training (restored afterwards).
    monitor : "sum" | "relative", default "sum"
        Early-stopping criterion: ``sum`` of the supervised tasks' validation losses, or their ``relative`` mean
        ``mean_t L_t / L_t(first epoch)``, so that every task counts alike whatever the scale of its loss.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(5, ge=1)
    seed: int = 0
    weighting: Literal["uncertainty", "fixed"] = "uncertainty"
    cluster_warmup_epochs: int = Field(2, ge=0)
    cluster_balance: float = Field(1.0, ge=0)
    grad_clip: float | None = Field(5.0, gt=0)
    num_threads: int | None = Field(None, ge=1)
    monitor: Literal["sum", "relative"] = "sum"


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


def cluster_representations(model: MultitaskModel, data: ArrayDataset, task: str, batch_size: int = 256) -> np.ndarray:
    """``[n, task_dim]`` representations ``h`` of clustering task ``task`` for every row of ``data`` (eval mode)."""
    index = model.task_names.index(task)
    was_training = model.training
    model.eval()
    chunks = []
    with torch.no_grad():
        for batch in data.iter_batches(batch_size):
            chunks.append(model(batch)["representations"][:, index].float().numpy())
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.task_dim), np.float32)


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
                  use_clustering: bool) -> dict[str, float]:
    """Mean per-task loss (unweighted) over ``data``, batch-size weighted, and ``"total"``: the sum over supervised
    tasks (the early-stopping criterion; the clustering loss when no task is supervised)."""
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    with torch.no_grad():
        for batch in data.iter_batches(batch_size):
            _, parts = loss_fn(model(batch), batch, use_clustering=use_clustering)
            size = len(batch["index"])
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v) * size
            n += size
    out = {k: v / max(n, 1) for k, v in sums.items()}
    supervised = [t.name for t in model.config.tasks if t.kind != "clustering"]
    out["total"] = sum(out[t] for t in supervised) if supervised else sum(out.values())
    return out


def fit_multitask(
    model: MultitaskModel,
    train: ArrayDataset,
    val: ArrayDataset,
    config: MultitaskTrainingConfig | None = None,
    *,
    weights: Mapping[str, float] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``train`` with early stopping on ``val``; the best epoch's weights are kept.

    Parameters
    ----------
    model : MultitaskModel
    train, val : ArrayDataset
        Inputs plus ``target:<task>`` arrays for the supervised tasks (see the module docstring).
    config : MultitaskTrainingConfig, optional
    weights : mapping, optional
        Fixed per-task loss weights (default 1 each).
    on_epoch : callable, optional
        Called as ``on_epoch(epoch, record)`` after every epoch (e.g. to update a progress bar).

    Returns
    -------
    history : dict
        ``epochs`` (list of per-epoch records: train loss, validation per-task losses, task weights,
        mean self-weight per task), ``best_epoch``, ``stopped_early``, ``task_weights`` (at the best epoch).

    Raises
    ------
    ValueError
        Empty training or validation data, a missing target array, or a clustering task with fewer training rows
        than clusters.
    """
    config = config or MultitaskTrainingConfig()
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"fit_multitask needs training and validation rows; got {len(train)} and {len(val)}.")
    for task in model.config.tasks:
        if task.kind != "clustering" and target_key(task.name) not in train:
            raise ValueError(f"Training data has no {target_key(task.name)!r} array for task {task.name!r}.")
    with torch_threads(config.num_threads):
        return _fit(model, train, val, config, weights, on_epoch)


def _fit(model, train, val, config, weights, on_epoch) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    loss_fn = MultitaskLoss(model.config.tasks, weights, config.weighting, config.cluster_balance)
    params = list(model.parameters()) + list(loss_fn.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    has_clustering = any(t.kind == "clustering" for t in model.config.tasks)
    supervised = [t.name for t in model.config.tasks if t.kind != "clustering"]
    best = BestWeights("min", config.patience, min_delta=1e-6)
    reference: dict[str, float] | None = None
    epochs: list[dict[str, Any]] = []
    stopped = False
    for epoch in range(config.max_epochs):
        use_clustering = has_clustering and epoch >= config.cluster_warmup_epochs
        if has_clustering and epoch == config.cluster_warmup_epochs:
            _init_centroids(model, train, config.seed)
        model.train()
        total, n = 0.0, 0
        for batch in train.iter_batches(config.batch_size, rng.permutation(len(train))):
            optimizer.zero_grad()
            loss, _ = loss_fn(model(batch), batch, use_clustering=use_clustering)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            size = len(batch["index"])
            total += float(loss.detach()) * size
            n += size
        val_losses = evaluate_loss(model, loss_fn, val, 2 * config.batch_size, use_clustering)
        record = {"epoch": epoch, "train_loss": total / max(n, 1), "val": val_losses,
                  "task_weights": loss_fn.task_weights()}
        epochs.append(record)
        if config.monitor == "relative" and supervised:
            reference = reference or {t: max(val_losses[t], 1e-12) for t in supervised}
            criterion = float(np.mean([val_losses[t] / reference[t] for t in supervised]))
        else:
            criterion = val_losses["total"]
        record["criterion"] = criterion
        # without a supervised task the criterion means something only once clustering has started
        if (supervised or use_clustering or not has_clustering) and best.update(criterion, epoch, model):
            record["best"] = True
        log.info("multitask epoch %d/%d train_loss=%.4f val_criterion=%.4f", epoch + 1, config.max_epochs,
                 record["train_loss"], criterion)
        if on_epoch is not None:
            on_epoch(epoch, record)
        # never stop before the clustering objective has had its own patience window
        if best.exhausted and (not has_clustering or epoch >= config.cluster_warmup_epochs + config.patience):
            stopped = True
            break
    best.restore(model)
    model.eval()
    best_epoch = -1 if best.best_epoch is None else best.best_epoch
    best_weights = epochs[best_epoch]["task_weights"] if best_epoch >= 0 else loss_fn.task_weights()
    return {"epochs": epochs, "best_epoch": best_epoch, "stopped_early": stopped, "task_weights": best_weights}


def predict_multitask(model: MultitaskModel, data: ArrayDataset, batch_size: int = 256,
                      removed: Sequence[str] = ()) -> dict[str, Any]:
    """Predictions of every task for every row of ``data`` (eval mode, no gradients).

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
    mask = torch.tensor([n in set(removed) for n in names], dtype=torch.bool) if removed else None
    model.eval()
    keys = ("representations", "task_attention", "self_weight", "task_present")
    acc: dict[str, list] = {k: [] for k in keys}
    preds: dict[str, list] = {n: [] for n in names}
    with torch.no_grad():
        for batch in data.iter_batches(batch_size):
            out = model(batch, removed=mask)
            for k in keys:
                acc[k].append(out[k].numpy())
            for name, p in model.predictions(out["logits"]).items():
                preds[name].append(p.numpy())
    result: dict[str, Any] = {k: np.concatenate(v) for k, v in acc.items()}
    result["predictions"] = {n: np.concatenate(v) for n, v in preds.items()}
    return result

