"""The self-supervised pretraining loop for a :class:`~healthfusion.models.pretraining.PretrainingModel`.

No labels are read: the datasets may hold a ``"target"`` array, it is ignored. Validation corruption is drawn from
a generator reset to the same seed every epoch, so validation losses of different epochs are comparable; the
weights of the epoch with the lowest validation loss are kept (early stopping after ``patience`` epochs
without improvement).

Example::

    history = pretrain(model, train_ds, val_ds, PretrainConfig(max_epochs=10, batch_size=128))
    history.best_epoch, history.val_loss
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.models.pretraining import PretrainingModel
from healthfusion.training.callbacks import BestWeights
from healthfusion.training.config import resolve_device

logger = logging.getLogger(__name__)


class PretrainConfig(BaseModel):
    """Settings of :func:`pretrain` (validated; unknown keys are an error).

    Attributes
    ----------
    max_epochs : int, default 20
    batch_size : int, default 64
    lr : float, default 1e-3
        Adam learning rate; cosine-annealed over ``max_epochs`` when ``lr_schedule="cosine"``.
    lr_schedule : {"constant", "cosine"}, default "constant"
    weight_decay : float, default 0.0
    patience : int or None, default 5
        Stop after this many epochs without a lower validation loss (None: never).
    grad_clip : float or None, default 1.0
    seed : int, default 0
    device : {"auto", "cpu", "cuda"}, default "auto"
    num_threads : int or None, default None
    progress : bool, default False
        Rich progress bar over epochs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: str = Field("constant", pattern="^(constant|cosine)$")
    weight_decay: float = Field(0.0, ge=0)
    patience: int | None = Field(5, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    seed: int = 0
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    num_threads: int | None = Field(None, ge=1)
    progress: bool = False


@dataclass
class PretrainHistory:
    """Per-epoch losses of :func:`pretrain` (``val_loss`` None without validation data)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _epoch(model, data, batch_size, order, generator, device, optimizer=None, clip=None) -> float:
    total, count = 0.0, 0.0
    for batch in data.iter_batches(batch_size, order, device=device):
        batch.pop(B.TARGET, None)
        if optimizer is None:
            with torch.no_grad():
                out = model(batch, generator)
        else:
            out = model(batch, generator)
            if int(out["n"]) == 0:
                continue
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
        n = float(out["n"])
        total += float(out["loss"].detach()) * n
        count += n
    return total / count if count > 0 else float("nan")


def pretrain(
    model: PretrainingModel,
    train: ArrayDataset,
    val: ArrayDataset | None = None,
    config: PretrainConfig | dict | None = None,
    console=None,
) -> PretrainHistory:
    """Fit ``model``'s encoder and objective head on unlabelled ``train`` in place.

    Parameters
    ----------
    model : PretrainingModel
    train, val : ArrayDataset
        The encoder's inputs (rows where its modality is present); a ``"target"`` array is ignored.
    config : PretrainConfig or dict, optional
    console : rich Console, optional
        Where the progress bar goes when ``config.progress`` is set.

    Returns
    -------
    PretrainHistory
        With validation data the model ends with the weights of ``best_epoch``.

    Raises
    ------
    TypeError
        If ``model`` is not a PretrainingModel or a dataset not an ArrayDataset.
    ValueError
        If the training set has fewer than 2 rows.
    """
    cfg = config if isinstance(config, PretrainConfig) else PretrainConfig.model_validate(config or {})
    if not isinstance(model, PretrainingModel):
        raise TypeError(f"pretrain expects a PretrainingModel, got {type(model).__name__}.")
    for name, data in (("train", train), ("val", val)):
        if data is not None and not isinstance(data, ArrayDataset):
            raise TypeError(f"pretrain expects {name} as an ArrayDataset, got {type(data).__name__}.")
    if len(train) < 2:
        raise ValueError(f"pretrain needs at least 2 training rows, got {len(train)}.")
    device = resolve_device(cfg.device)
    previous_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    history = PretrainHistory()
    progress = task = None
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best = BestWeights("min", cfg.patience)
        if cfg.progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[info]}"), console=console)
            progress.start()
            task = progress.add_task("pretrain", total=cfg.max_epochs, info="")
        for epoch in range(cfg.max_epochs):
            start = time.perf_counter()
            if cfg.lr_schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.max_epochs))
            model.train()
            order = rng.permutation(len(train))
            train_loss = _epoch(model, train, cfg.batch_size, order, generator, device, optimizer, cfg.grad_clip)
            val_loss = None
            if val is not None and len(val) > 0:
                model.eval()
                val_gen = torch.Generator().manual_seed(cfg.seed + 1)
                val_loss = _epoch(model, val, 2 * cfg.batch_size, None, val_gen, device)
            history.train_loss.append(train_loss)
            history.val_loss.append(val_loss)
            history.epoch_seconds.append(time.perf_counter() - start)
            logger.info("pretrain epoch %d/%d train_loss=%.4f val_loss=%s", epoch + 1, cfg.max_epochs, train_loss,
                        "-" if val_loss is None else f"{val_loss:.4f}")
            if progress is not None:
                info = f"train_loss={train_loss:.4f}" + ("" if val_loss is None else f" val_loss={val_loss:.4f}")
                progress.update(task, completed=epoch + 1, info=info)
            if val_loss is None:
                continue
            if best.update(val_loss, epoch, model):
                history.best_epoch = epoch
            elif best.exhausted:
                history.stopped_early = True
                break
        best.restore(model)
        model.eval()
    finally:
        if progress is not None:
            progress.stop()
        torch.set_num_threads(previous_threads)
    return history
