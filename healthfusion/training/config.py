"""Trainer settings and the per-epoch training record.

Example::

    config = TrainerConfig(max_epochs=20, imbalance="oversample")
    config = TrainerConfig(image_augmentation={"max_shift": 2, "max_rotation": 10})  # augmented image batches
    config.model_dump()  # plain dict, e.g. for a run's metadata
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from healthfusion.features.image import ImageAugmentation
from healthfusion.training.finetune import FinetuneConfig

logger = logging.getLogger(__name__)


class TrainerConfig(BaseModel):
    """Training settings (validated on construction; unknown keys are an error).

    Attributes
    ----------
    max_epochs : int, default 50
    max_steps : int or None, default None
        Stop after this many optimiser steps in all (e.g. a federated client's local round). None: no cap.
    batch_size : int, default 64
        Training batch size; validation and prediction use twice this (no gradients are kept).
    lr : float, default 1e-3
        Adam learning rate (the starting one under a schedule).
    lr_schedule : {"constant", "cosine"}, default "constant"
        ``cosine``: the learning rate of epoch ``e`` (0-based) is ``lr * (1 + cos(pi * e / max_epochs)) / 2``,
        annealing towards 0 by the last epoch; useful when training for a fixed number of epochs.
    weight_decay : float, default 1e-4
        L2 penalty (Adam's ``weight_decay``).
    patience : int or None, default 8
        Early-stopping patience in epochs, used when ``fit`` gets validation data and no
        :class:`EarlyStopping` callback is passed. None: no automatic early stopping.
    monitor : str or None, default None
        A validation value the fit logs: ``"val_loss"`` or the head's metric (``"val_auroc"``,
        ``"val_accuracy"``, ``"val_macro_auroc"``, ``"val_neg_mse"``) with the supervised loss, or a value another
        loss term reports. None: the loss terms' default (the head's metric; ``val_loss`` for the other modes).
    imbalance : {"none", "class_weight", "oversample"}, default "none"
        ``class_weight``: balanced loss weights from the training labels (binary, multiclass, multilabel).
        ``oversample``: each epoch draws minority classes with replacement up to the largest class
        (binary, multiclass).
    seed : int, default 0
        Seeds torch's global RNG at the start of ``fit`` and the numpy generator that orders samples.
    device : {"auto", "cpu", "cuda"}, default "auto"
        ``auto``: CUDA when available, else CPU.
    mixed_precision : bool, default False
        float16 autocast + gradient scaling on CUDA; ignored (with a warning) on CPU.
    grad_clip : float or None, default None
        Clip the gradients' global L2 norm to this value.
    num_threads : int or None, default None
        ``torch.set_num_threads`` during ``fit``/``predict`` (restored afterwards). None: leave as is.
    progress : bool, default False
        Add a :class:`ProgressCallback` (rich progress bars).
    image_augmentation : ImageAugmentation or None, default None
        Random augmentation (flips, shifts, rotations, zoom, intensity jitter; see
        :class:`~healthfusion.features.image.ImageAugmentation`) of the ``"image"`` array of *training* batches,
        on the rows whose ``image_present`` flag is set; validation and ``predict`` always see the images
        unchanged. Drawn from a generator seeded from ``seed``, so runs stay reproducible. A dict is accepted,
        e.g. ``{"max_shift": 3, "max_rotation": 10}``. None: no augmentation.
    finetune : FinetuneConfig or None, default None
        Fine-tuning strategy for models with pretrained modules: ``linear_probe`` (frozen), ``full``,
        ``gradual_unfreeze`` or ``discriminative`` learning rates (see :mod:`healthfusion.training.finetune`).
        A dict is accepted, e.g. ``{"strategy": "linear_probe", "modules": ["encoders.ts"]}``. None: plain
        training of every parameter.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_epochs: int = Field(50, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(1e-4, ge=0)
    patience: int | None = Field(8, ge=1)
    monitor: str | None = None
    imbalance: Literal["none", "class_weight", "oversample"] = "none"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = False
    grad_clip: float | None = Field(None, gt=0)
    num_threads: int | None = Field(None, ge=1)
    progress: bool = False
    image_augmentation: ImageAugmentation | None = None
    finetune: FinetuneConfig | None = None


def training_section(value: Any, preset: dict[str, Any], section: str) -> Any:
    """A workflow's ``training:`` section as a dict over the workflow's ``preset`` (its defaults for keys the
    section leaves out), with keys of the earlier per-mode training configs translated: ``class_weight: bool``
    (now ``imbalance``) and ``early_stopping: false`` (now ``patience: null``), each with a warning. A
    TrainerConfig (or anything not a dict) passes through unchanged; use it as a pydantic ``mode="before"``
    validator.

    Raises
    ------
    ValueError
        If an earlier key is given together with its new key.
    """
    if isinstance(value, TrainerConfig) or not isinstance(value, dict):
        return value
    value = dict(value)
    if "class_weight" in value:
        if "imbalance" in value:
            raise ValueError(f"{section}: give imbalance only (class_weight is its earlier name)")
        flag = value.pop("class_weight")
        if not isinstance(flag, bool):
            raise ValueError(f"{section}.class_weight must be true or false (better: imbalance: class_weight|none)")
        value["imbalance"] = "class_weight" if flag else "none"
        logger.warning("%s.class_weight is read as imbalance: %s; write that instead.", section, value["imbalance"])
    if "early_stopping" in value:
        if value.pop("early_stopping") is False:
            if value.get("patience") is not None and "patience" in value:
                raise ValueError(f"{section}: early_stopping: false and patience conflict; write patience: null")
            value["patience"] = None
        logger.warning("%s.early_stopping is read as patience (null: no early stopping); write that instead.", section)
    return {**preset, **value}


@dataclass
class TrainingHistory:
    """Per-epoch record of a fit (lists indexed by 0-based epoch; a resumed fit continues the same lists).

    Attributes
    ----------
    monitor : str or None
        The monitored metric's name (None without validation data).
    train_loss, val_loss, val_metric, epoch_seconds : list of float
        ``val_loss``/``val_metric`` hold None without validation data; ``val_metric`` is the head's metric
        (see :mod:`healthfusion.training.monitoring`), NaN when it cannot be computed.
    metrics : dict of str -> list
        Further per-epoch values the loss terms report (e.g. ``mmd``, ``domain_accuracy``, per-task validation
        losses), None where an epoch lacks one.
    best_epoch : int or None
        Epoch with the best monitored value (the one early stopping restored), None without validation data.
    stopped_early : bool
    """

    monitor: str | None = None
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_metric: list[float | None] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    metrics: dict[str, list] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_early: bool = False

    def __len__(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (NaN stays NaN)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> TrainingHistory:
        """Inverse of :meth:`to_dict`."""
        state = dict(state)
        state["metrics"] = {k: list(v) for k, v in state.get("metrics", {}).items()}
        return cls(**{k: list(v) if isinstance(v, list) else v for k, v in state.items()})


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``"auto"``/``"cpu"``/``"cuda"``.

    Raises
    ------
    ValueError
        If ``"cuda"`` is requested but not available, or ``device`` is unknown.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was requested but torch sees no CUDA device; use device='auto' or 'cpu'."
        )
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {device!r}.")
    return torch.device(device)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block, the previous count restored after it (None: leave as is)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
