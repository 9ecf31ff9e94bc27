"""Domain adaptation: the multi-kernel MMD estimator, the DANN strength schedule, and one training loop for every
transfer strategy (plain supervised training, fine-tuning with frozen parts, DANN, MMD, and their combination).

The loop trains on a labelled ``train`` set (risk loss) and, when ``dann_weight`` or ``mmd_weight`` is set, draws at
each step one batch of the ``source`` and one of the ``target`` domain's *features* (labels are never read from
them) to align the shared representation:

* **DANN** (Ganin et al. 2016): a domain classifier sees the representation through a gradient-reversal layer; the
  reversal strength follows ``dann_weight * (2 / (1 + exp(-gamma * p)) - 1)`` over training progress ``p`` in [0, 1]
  (:func:`dann_strength`), so alignment starts weak while the features are still random. The classifier's accuracy on
  the training batches is logged every epoch (near 0.5 = the domains look alike to it).
* **MMD** (Long et al. 2015): ``mmd_weight *`` the squared maximum mean discrepancy between the source and target
  representations under a sum of Gaussian kernels (:func:`gaussian_mmd`).

Early stopping watches the ``val`` set the caller passes; callers must draw it from target *training* stays or the
source, never from the target test set (the transfer workflow does; its tests check it).

Example::

    config = AdaptationConfig(max_epochs=20, dann_weight=1.0, mmd_weight=1.0)
    history = fit_transfer(model, train, val, config, source=source_features, target=target_features)
    risk = predict_proba(model, test)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.training.callbacks import BestWeights
from healthfusion.training.monitoring import head_metric
from healthfusion.training.objectives import Objective, class_weights_from_labels
from healthfusion.training.sampling import shuffled_order

log = logging.getLogger(__name__)

DEFAULT_KERNEL_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, scales: tuple[float, ...] = DEFAULT_KERNEL_SCALES,
                 bandwidth: float | None = None) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples ``x`` [n, D] and ``y`` [m, D] (biased V-statistic).

    The kernel is ``sum_s exp(-||a - b||^2 / (s * h))`` over ``scales`` s, where the bandwidth ``h`` is the median
    squared distance between all pooled points (computed without gradient) unless given. The estimate is >= 0, exactly
    0 when the two samples are the same points, and grows as the distributions move apart.

    Raises
    ------
    ValueError
        If ``x`` or ``y`` is not 2-D, they differ in width, either is empty, or a scale/bandwidth is not positive.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"gaussian_mmd expects x [n, D] and y [m, D], got {tuple(x.shape)} and {tuple(y.shape)}.")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("gaussian_mmd needs at least one sample on each side.")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"Kernel scales must be positive; got {scales}.")
    z = torch.cat([x, y], dim=0)
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        off = d2.detach()[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
        h = float(off.median()) if off.numel() else 1.0
        h = h if h > 1e-12 else 1.0
    elif bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}.")
    else:
        h = float(bandwidth)
    k = sum(torch.exp(-d2 / (s * h)) for s in scales)
    n = x.shape[0]
    value = k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()
    return value.clamp_min(0.0)


def dann_strength(progress: float, max_strength: float = 1.0, gamma: float = 10.0) -> float:
    """The DANN gradient-reversal schedule ``max_strength * (2 / (1 + exp(-gamma * progress)) - 1)``.

    0 at ``progress`` 0, rising smoothly towards ``max_strength`` at 1 (0.9999 * max at gamma 10).

    Raises
    ------
    ValueError
        If ``progress`` is outside [0, 1] or ``max_strength``/``gamma`` is negative.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}.")
    if max_strength < 0 or gamma < 0:
        raise ValueError(f"max_strength and gamma must be >= 0, got {max_strength} and {gamma}.")
    return float(max_strength * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0))


class AdaptationConfig(BaseModel):
    """Settings of :func:`fit_transfer` (validated; unknown keys are errors).

    Attributes
    ----------
    max_epochs : int, default 20
        An epoch is one pass over the labelled ``train`` set.
    batch_size : int, default 64
        Labelled batch size; each alignment batch (source and target) has the same size.
    lr : float, default 1e-3
    weight_decay : float, default 1e-4
    patience : int, default 5
        Epochs without improvement of ``monitor`` on ``val`` before stopping; the best epoch's weights are restored.
    early_stopping : bool, default True
        False: train all ``max_epochs`` and keep the last weights (``val`` is still evaluated and logged); a fixed
        budget set in advance, for validation sets too small to choose an epoch on.
    monitor : {"val_loss", "val_auroc"}, default "val_loss"
        ``val_loss`` (the class-weighted log-loss) is steadier than AUROC on the few positives of a small target.
    class_weight : bool, default True
        Weight positives by ``n_negative / n_positive`` of ``train`` so a 0.5 threshold separates high and low risk.
    dann_weight : float, default 0
        Maximum gradient-reversal strength (0: no DANN).
    dann_gamma : float, default 10
        Steepness of the :func:`dann_strength` schedule.
    mmd_weight : float, default 0
        Weight of the MMD term (0: no MMD).
    mmd_schedule : {"constant", "ramp"}, default "constant"
        ``ramp``: the MMD weight follows the DANN schedule ``mmd_weight * (2 / (1 + exp(-dann_gamma * p)) - 1)``,
        so the risk head learns before alignment pulls on the representation (a full-strength MMD term from the
        first step can collapse the representation).
    freeze : tuple of str, default ()
        Model parts that do not train (e.g. ``("ts_encoder",)`` for fine-tuning only the upper layers).
    seed : int, default 0
        Seeds torch (dropout) and the batch order.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(5, ge=1)
    early_stopping: bool = True
    monitor: str = Field("val_loss", pattern="^(val_loss|val_auroc)$")
    class_weight: bool = True
    dann_weight: float = Field(0.0, ge=0)
    dann_gamma: float = Field(10.0, ge=0)
    mmd_weight: float = Field(0.0, ge=0)
    mmd_schedule: str = Field("constant", pattern="^(constant|ramp)$")
    freeze: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class AdaptationHistory:
    """Per-epoch record of a :func:`fit_transfer` run (lists indexed by epoch)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_auroc: list[float] = field(default_factory=list)
    domain_accuracy: list[float | None] = field(default_factory=list)
    mmd: list[float | None] = field(default_factory=list)
    dann_strength: list[float | None] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stream:
    """Endless shuffled batches of one dataset's features (the target array removed)."""

    def __init__(self, data: ArrayDataset, batch_size: int, rng: np.random.Generator):
        self.data = data.without(B.TARGET)
        self.batch_size = min(batch_size, len(data))
        self.rng = rng
        self._order: np.ndarray = np.empty(0, dtype=np.int64)

    def next(self) -> dict[str, torch.Tensor]:
        if len(self._order) < self.batch_size:
            self._order = np.concatenate([self._order, shuffled_order(len(self.data), self.rng)])
        idx, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return self.data.batch(idx)


def _check_train(train: ArrayDataset, val: ArrayDataset) -> None:
    for name, data in (("train", train), ("val", val)):
        if not isinstance(data, ArrayDataset):
            raise TypeError(f"fit_transfer expects ArrayDataset {name} data, got {type(data).__name__}.")
        if B.TARGET not in data:
            raise ValueError(f"The {name} set has no {B.TARGET!r} array; build it with a label.")
        if len(data) == 0:
            raise ValueError(f"The {name} set is empty.")


def predict_proba(model: nn.Module, data: ArrayDataset, batch_size: int = 256) -> np.ndarray:
    """``[n]`` predicted probabilities of the outcome (sigmoid of the model's logits), in eval mode."""
    model.eval()
    out = []
    with torch.no_grad():
        for batch in data.without(B.TARGET).iter_batches(batch_size):
            out.append(torch.sigmoid(model(batch)["logits"].float()).reshape(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _evaluate(model: nn.Module, data: ArrayDataset, objective: Objective, batch_size: int) -> tuple[float, float]:
    model.eval()
    total = norm = 0.0
    probs = []
    with torch.no_grad():
        for batch in data.iter_batches(batch_size):
            target = batch.pop(B.TARGET)
            logits = model(batch)["logits"]
            s, n = objective.terms(logits, target)
            total, norm = total + float(s), norm + float(n)
            probs.append(torch.sigmoid(logits.float()).numpy())
    loss = total / norm if norm > 0 else float("nan")
    return loss, head_metric("binary", data[B.TARGET], np.concatenate(probs))


def fit_transfer(
    model: nn.Module,
    train: ArrayDataset,
    val: ArrayDataset,
    config: AdaptationConfig | dict | None = None,
    *,
    source: ArrayDataset | None = None,
    target: ArrayDataset | None = None,
    on_epoch: Callable[[int, dict[str, float | None]], None] | None = None,
) -> AdaptationHistory:
    """Train ``model`` in place on ``train``, early-stopping on ``val``; align ``source`` and ``target`` if asked.

    Parameters
    ----------
    model : nn.Module
        ``forward(batch) -> {"logits": [B], "embedding": [B, D]}``; for DANN also ``domain_logits(embedding,
        strength)`` and for frozen parts ``freeze(names)`` (:class:`~healthfusion.models.transfer.TransferModel`).
    train : ArrayDataset
        Labelled training stays (``target`` 0/1, NaN = missing, ignored by the loss).
    val : ArrayDataset
        Labelled validation stays for early stopping: target *training* stays or source stays only.
    config : AdaptationConfig or dict, optional
    source, target : ArrayDataset, optional
        Features of the two domains for DANN/MMD (their ``target`` arrays, if any, are dropped unread). Required
        when ``dann_weight`` or ``mmd_weight`` is set.
    on_epoch : callable, optional
        ``on_epoch(epoch, metrics)`` after every epoch (e.g. a progress display).

    Returns
    -------
    AdaptationHistory
        The model ends with the weights of the best validation epoch (the last epoch without early stopping).

    Raises
    ------
    ValueError
        Missing/empty data or target, alignment requested without ``source``/``target``, class weighting with a
        training set of one class, or an unknown part to freeze.
    """
    cfg = config if isinstance(config, AdaptationConfig) else AdaptationConfig.model_validate(config or {})
    _check_train(train, val)
    aligning = cfg.dann_weight > 0 or cfg.mmd_weight > 0
    if aligning and (source is None or target is None or len(source) == 0 or len(target) == 0):
        raise ValueError("dann_weight/mmd_weight need the features of both domains: pass non-empty source= and "
                         "target= datasets.")
    if cfg.freeze:
        if not hasattr(model, "freeze"):
            raise ValueError(f"freeze={list(cfg.freeze)} needs a model with a freeze(names) method.")
        model.freeze(cfg.freeze)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    weight = class_weights_from_labels(train[B.TARGET], "binary") if cfg.class_weight else None
    objective = Objective("binary", weight)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    streams = (_Stream(source, cfg.batch_size, rng), _Stream(target, cfg.batch_size, rng)) if aligning else None
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.max_epochs
    history = AdaptationHistory()
    best = BestWeights("max" if cfg.monitor == "val_auroc" else "min", cfg.patience)
    step = 0
    for epoch in range(cfg.max_epochs):
        start = time.perf_counter()
        model.train()
        losses, correct, seen, mmds, strength = [], 0, 0, [], None
        for batch in train.iter_batches(cfg.batch_size, shuffled_order(len(train), rng)):
            y = batch.pop(B.TARGET)
            loss = objective(model(batch)["logits"], y)
            if streams is not None:
                zs, zt = model.encode(streams[0].next()), model.encode(streams[1].next())
                progress = min(step / max(total_steps - 1, 1), 1.0)
                if cfg.mmd_weight > 0:
                    mmd = gaussian_mmd(zs, zt)
                    weight = (cfg.mmd_weight if cfg.mmd_schedule == "constant"
                              else dann_strength(progress, cfg.mmd_weight, cfg.dann_gamma))
                    loss = loss + weight * mmd
                    mmds.append(mmd.item())
                if cfg.dann_weight > 0:
                    strength = dann_strength(progress, cfg.dann_weight, cfg.dann_gamma)
                    logits = model.domain_logits(torch.cat([zs, zt]), strength)
                    domain = torch.cat([torch.zeros(len(zs)), torch.ones(len(zt))])
                    loss = loss + nn.functional.binary_cross_entropy_with_logits(logits, domain)
                    correct += int(((logits > 0).float() == domain).sum())
                    seen += len(domain)
            for p in params:
                p.grad = None
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        val_loss, val_auroc = _evaluate(model, val, objective, 2 * cfg.batch_size)
        history.train_loss.append(float(np.mean(losses)))
        history.val_loss.append(val_loss)
        history.val_auroc.append(val_auroc)
        history.domain_accuracy.append(correct / seen if seen else None)
        history.mmd.append(float(np.mean(mmds)) if mmds else None)
        history.dann_strength.append(strength)
        history.epoch_seconds.append(time.perf_counter() - start)
        value = val_loss if cfg.monitor == "val_loss" else val_auroc
        log.info("transfer epoch %d/%d train_loss=%.4f val_loss=%.4f val_auroc=%.4f (%.2f s)", epoch + 1,
                 cfg.max_epochs, history.train_loss[-1], val_loss, val_auroc, history.epoch_seconds[-1])
        if on_epoch is not None:
            on_epoch(epoch, {"train_loss": history.train_loss[-1], "val_loss": val_loss, "val_auroc": val_auroc,
                             "domain_accuracy": history.domain_accuracy[-1], "mmd": history.mmd[-1]})
        if not cfg.early_stopping:
            history.best_epoch = epoch
        elif best.update(value, epoch, model):
            history.best_epoch = epoch
        elif best.exhausted:
            history.stopped_early = True
            break
    if cfg.early_stopping:
        best.restore(model)
    model.eval()
    return history
