"""The one training loop: every mode (supervised, transfer, multitask, pretraining, a federated client's local
round, DP-SGD) is this trainer with different loss terms, auxiliary sources, callbacks and plug-ins.

The trainer owns the engineering (device and mixed precision, optimiser, learning-rate schedule, shuffling, class
imbalance, image augmentation, gradient clipping, validation, early stopping, checkpoints, history, logging,
progress, fine-tuning / freezing); a loss term (:mod:`healthfusion.training.losses`) owns the maths. Without an
explicit loss the fit is supervised: ``model.forward(batch)`` returns a dict whose ``"logits"`` are [B] (binary,
regression) or [B, K] (multiclass, multilabel, multi-output regression) for the batch dict of
:mod:`healthfusion.features.batch` without its ``"target"`` key.

Example::

    trainer = Trainer(TrainerConfig(max_epochs=20, patience=5))
    history = trainer.fit(model, train_ds, val_ds, head_kind="binary")
    risk = trainer.predict(model, test_ds)  # [n] probabilities

    # transfer: risk + DANN + MMD, source and target features drawn each step
    Trainer(config, loss=[SupervisedLoss("binary"), MMDLoss(1.0), DANNLoss(1.0)]).fit(
        model, train_ds, val_ds, sources={"source": src_ds, "target": tgt_ds})
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.features.image import augment
from healthfusion.training import checkpoint as ckpt
from healthfusion.training.callbacks import Callback, Checkpoint, EarlyStopping, ProgressCallback
from healthfusion.training.config import TrainerConfig, TrainingHistory, resolve_device, torch_threads
from healthfusion.training.finetune import FineTuner
from healthfusion.training.losses import Losses, LossTerm, StepState, as_losses
from healthfusion.training.losses.supervised import SupervisedLoss, infer
from healthfusion.training.monitoring import MONITOR_NAMES, monitor_mode
from healthfusion.training.objectives import check_head_kind
from healthfusion.training.plugins import TrainingParts, TrainingPlugin
from healthfusion.training.sampling import EpochLoader, SourceSampler

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = ckpt.CHECKPOINT_FORMAT
CHECKPOINT_VERSION = ckpt.CHECKPOINT_VERSION


def _augment_seed(seed: int) -> int:
    """Seed of the image-augmentation generator: derived from ``seed`` but a different stream from the one
    ``torch.manual_seed(seed)`` gives the global generator (dropout), so the two draws are not correlated."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class Trainer:
    """Fits a model on :class:`ArrayDataset` data with one or more loss terms.

    Parameters
    ----------
    config : TrainerConfig or dict, optional
        Default ``TrainerConfig()``.
    callbacks : sequence of Callback, default ()
        Called in order, except that :class:`Checkpoint` callbacks run after all others (so a checkpoint sees
        this epoch's early-stopping state). With validation data and ``config.patience`` set, an
        :class:`EarlyStopping` on the monitored metric is added first unless one is passed.
    loss : LossTerm or sequence of LossTerm, optional
        What the fit minimises (summed). Default: a :class:`SupervisedLoss` for ``fit``'s ``head_kind``, with
        class weights when ``config.imbalance == "class_weight"``.
    plugins : sequence of TrainingPlugin, default ()
        Wrap the model, optimiser and data loader before the loop (see :mod:`healthfusion.training.plugins`).

    Attributes (during and after ``fit``)
    -------------------------------------
    model, optimizer, loss, epoch, start_epoch, step, num_batches, metrics, metric_names, monitor, head_kind,
    history, should_stop : see :mod:`healthfusion.training.callbacks`.
    """

    def __init__(
        self,
        config: TrainerConfig | Mapping[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        loss: LossTerm | Sequence[LossTerm] | None = None,
        plugins: Sequence[TrainingPlugin] = (),
    ):
        self.config = (
            config if isinstance(config, TrainerConfig) else TrainerConfig.model_validate(config or {})
        )
        self.callbacks = list(callbacks)
        self.plugins = list(plugins)
        self._loss = as_losses(loss)
        self.should_stop = False
        self.head_kind: str | None = None
        self.history = TrainingHistory()
        self._resume_state: dict[str, Any] | None = None

    # --------------------------------------------------------------------------------------------------- fit
    def fit(
        self,
        model: nn.Module,
        train: ArrayDataset,
        val: ArrayDataset | None = None,
        head_kind: str = "binary",
        *,
        sources: Mapping[str, ArrayDataset] | None = None,
    ) -> TrainingHistory:
        """Train ``model`` in place on ``train``, validating on ``val`` after every epoch.

        Parameters
        ----------
        model : nn.Module
            Moved to the configured device. With the default supervised loss:
            ``forward(batch: dict[str, Tensor]) -> {"logits": Tensor}``.
        train, val : ArrayDataset
            With the default loss they must hold a ``"target"`` array matching ``head_kind`` (missing: NaN for
            floats, -1 for ints).
        head_kind : {"binary", "multiclass", "multilabel", "regression"}, default "binary"
            The default supervised loss's head, and ``predict``'s default.
        sources : mapping of str -> ArrayDataset, optional
            Auxiliary data drawn once per step (features only) for terms that declare ``sources`` (e.g.
            ``{"source": ..., "target": ...}`` for DANN/MMD).

        Returns
        -------
        TrainingHistory
            Also kept as ``self.history``. With early stopping the model ends with the best epoch's weights.

        Raises
        ------
        TypeError
            If a dataset is not an ArrayDataset or the model does not return ``{"logits": tensor}``.
        ValueError
            On a missing/ill-formed target, an empty training set, an imbalance option the head kind does not
            support, a monitor the fit does not log, a source a loss term needs but ``sources`` lacks, a
            checkpoint (``resume_from``) for another head kind, or ``image_augmentation`` set for a train dataset
            without an ``"image"`` array.
        """
        kind = check_head_kind(head_kind)
        cfg = self.config
        for name, data in (("train", train), ("val", val)):
            if data is not None and not isinstance(data, ArrayDataset):
                raise TypeError(f"fit expects {name} as an ArrayDataset; got {type(data).__name__}.")
        if len(train) == 0:
            raise ValueError("The train dataset is empty (0 samples).")
        if cfg.image_augmentation is not None and B.IMAGE not in train:
            raise ValueError(
                f"image_augmentation is set but the train dataset has no {B.IMAGE!r} array (it has "
                f"{', '.join(sorted(train))}); add the image modality or set image_augmentation=None."
            )
        if cfg.imbalance == "oversample" and kind not in ("binary", "multiclass"):
            raise ValueError(
                f"imbalance='oversample' needs one class label per sample; a {kind} head has none. "
                "Use 'class_weight' (multilabel) or 'none'."
            )
        self.loss: Losses = self._loss or Losses([SupervisedLoss(kind, cfg.imbalance == "class_weight")])
        sources = {k: v for k, v in (sources or {}).items() if v is not None}
        missing = [s for s in self.loss.sources if s not in sources]
        if missing:
            raise ValueError(f"The loss terms read the auxiliary source(s) {missing}; pass them to fit as "
                             f"sources={{name: ArrayDataset}} (got {sorted(sources)}).")
        self.device = resolve_device(cfg.device)
        self._amp = cfg.mixed_precision and self.device.type == "cuda"
        if cfg.mixed_precision and not self._amp:
            logger.warning("mixed_precision=True has no effect on %s; training in float32.", self.device)
        self.head_kind = kind
        self.should_stop = False
        self.epoch, self.start_epoch, self.num_batches, self.step = -1, 0, 0, 0
        with self._threads():
            torch.manual_seed(cfg.seed)
            self._rng = np.random.default_rng(cfg.seed)
            self._augment_rng = torch.Generator().manual_seed(_augment_seed(cfg.seed))
            self.model = model.to(self.device)
            self.state = StepState(max_epochs=cfg.max_epochs, device=self.device, seed=cfg.seed,
                                   eval_batch_size=2 * cfg.batch_size, autocast=self._autocast)
            for term in self.loss.terms:
                term.setup(self.model, train, self.state)
            self.loss.to(self.device)
            if val is not None:
                self._check_val(val, kind)
            self.metric_names = ("train_loss",) + (self.loss.validation_names() if val is not None else ())
            self.monitor = self._resolve_monitor(kind) if val is not None else None
            self.history = TrainingHistory(monitor=self.monitor)
            self._finetuner = FineTuner(self.model, cfg.finetune) if cfg.finetune is not None else None
            params = self._finetuner.param_groups(cfg.lr) if self._finetuner else list(self.model.parameters())
            extra = [p for p in self.loss.parameters() if p.requires_grad]
            if extra:
                params = (params if self._finetuner else [{"params": params}]) + [{"params": extra}]
            optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            loader = EpochLoader(train, cfg.batch_size, self._rng, oversample=cfg.imbalance == "oversample",
                                 pin_memory=self.device.type == "cuda")
            self._sampler = SourceSampler(sources, cfg.batch_size, self._rng) if self.loss.sources else None
            parts = TrainingParts(self.model, optimizer, loader)
            for plugin in self.plugins:
                parts = plugin.wrap(parts, self)
            self.model, self.optimizer, self.loader = parts.model, parts.optimizer, parts.loader
            self._scaler = torch.amp.GradScaler("cuda") if self._amp else None
            self._active = self._collect_callbacks(val is not None)
            resume, self._resume_state = self._resume_state, None
            if resume is not None:
                ckpt.restore(self, resume)
            try:
                for cb in self._active:
                    cb.on_fit_start(self)
                if resume is not None:
                    ckpt.restore_callbacks(self._active, resume["callbacks"])
                self._loop(val)
                self._finish()
                for cb in self._active:
                    cb.on_fit_end(self)
                for plugin in self.plugins:
                    plugin.on_fit_end(self)
            except BaseException as exc:
                for cb in self._active:
                    cb.on_exception(self, exc)
                raise
            finally:
                if self._finetuner is not None:
                    self._finetuner.restore()
        return self.history

    def local_round(self, model: nn.Module, train: ArrayDataset, weights: Mapping[str, torch.Tensor] | None = None,
                    *, epochs: int | None = None, steps: int | None = None, seed: int | None = None,
                    head_kind: str = "binary", sources: Mapping[str, ArrayDataset] | None = None,
                    ) -> dict[str, Any]:
        """Run a fixed amount of local training from given weights (a federated client's round); no validation.

        Parameters
        ----------
        model : nn.Module
        train : ArrayDataset
        weights : state dict, optional
            Loaded into ``model`` first (e.g. the global model of this round).
        epochs, steps : int, optional
            Local epochs (default ``config.max_epochs``) and/or a cap on optimiser steps.
        seed : int, optional
            Replaces ``config.seed`` for this round (give each round its own seed).

        Returns
        -------
        dict
            ``weights`` (the new state dict, CPU tensors), ``n_samples`` (training rows), ``steps`` (optimiser
            steps taken) and ``metrics`` (the last epoch's values).
        """
        if weights is not None:
            model.load_state_dict(weights)
        update: dict[str, Any] = {"patience": None}
        if epochs is not None:
            update["max_epochs"] = epochs
        if steps is not None:
            update["max_steps"] = steps
        if seed is not None:
            update["seed"] = seed
        saved = self.config
        self.config = saved.model_copy(update=update)
        try:
            self.fit(model, train, None, head_kind, sources=sources)
        finally:
            self.config = saved
        return {"weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "n_samples": len(train), "steps": self.step, "metrics": dict(self.metrics)}

    def _loop(self, val: ArrayDataset | None) -> None:
        cfg = self.config
        per_epoch = len(self.loader) if hasattr(self.loader, "__len__") else 1
        self.state.total_steps = cfg.max_steps or per_epoch * cfg.max_epochs
        for epoch in range(self.start_epoch, cfg.max_epochs):
            if self.should_stop or (cfg.max_steps is not None and self.step >= cfg.max_steps):
                break
            self.epoch = self.state.epoch = epoch
            start = time.perf_counter()
            self.num_batches = per_epoch
            if cfg.lr_schedule != "constant":
                self._set_lr(epoch)
            if self._finetuner is not None:
                self._finetuner.start_epoch(epoch)
            for term in self.loss.terms:
                term.on_epoch_start(self.state)
            for cb in self._active:
                cb.on_epoch_start(self)
            self.metrics = self._train_epoch()
            if val is not None:
                self.metrics.update(self.loss.validate(self.model, val, self.state))
            self._record(time.perf_counter() - start)
            for cb in self._active:
                cb.on_epoch_end(self)

    def _train_epoch(self) -> dict[str, float]:
        model, optimizer, scaler, clip = self.model, self.optimizer, self._scaler, self.config.grad_clip
        # Plain `p.grad = None` instead of optimizer.zero_grad(): same effect, without its per-call profiler hooks.
        params = [p for group in optimizer.param_groups for p in group["params"]]
        model.train()
        if self._finetuner is not None:
            self._finetuner.freeze_modes()
        parts_log: list[list] = []  # per batch: [(loss, weight) per term]; summed once per epoch (no device sync)
        logged: dict[str, list] = {}
        for i, batch in enumerate(self.loader):
            if self.config.max_steps is not None and self.step >= self.config.max_steps:
                break
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            if self.config.image_augmentation is not None:
                batch[B.IMAGE] = self._augment_images(batch)
            self.state.new_step(self.step, self._sampler.draw(self.device) if self._sampler is not None else {})
            with self._autocast():
                loss, parts, metrics = self.loss.compute(model, batch, self.state)
            parts_log.append(parts)
            self.step += 1
            if metrics.pop("skip", False):
                continue
            for p in params:
                p.grad = None
            if scaler is not None:
                scaler.scale(loss).backward()
                if clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
            for k, v in metrics.items():
                logged.setdefault(k, []).append(v.detach() if isinstance(v, torch.Tensor) else v)
            for cb in self._active:
                cb.on_batch_end(self, i)
        return {"train_loss": _epoch_loss(parts_log), **{k: float(np.mean([float(x) for x in v]))
                                                         for k, v in logged.items()}}

    def _record(self, seconds: float) -> None:
        h, m = self.history, self.metrics
        h.train_loss.append(m["train_loss"])
        h.val_loss.append(m.get("val_loss"))
        head = [n for n in self.metric_names if n in MONITOR_NAMES and n != "val_loss"]
        h.val_metric.append(m.get(head[0]) if head else None)
        h.epoch_seconds.append(seconds)
        for k, v in m.items():
            if k not in ("train_loss", "val_loss") and (not head or k != head[0]):
                h.metrics.setdefault(k, [None] * (len(h.train_loss) - 1)).append(v)
        logger.info("epoch %d/%d %s (%.2f s)", self.epoch + 1, self.config.max_epochs,
                    " ".join(f"{k}={v:.4f}" for k, v in m.items() if v is not None), seconds)

    def _set_lr(self, epoch: int) -> None:
        """Set the learning rate of ``epoch`` under the cosine ``config.lr_schedule`` (a function of the epoch only,
        so a resumed fit continues the same schedule)."""
        cfg = self.config
        lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.max_epochs))  # "cosine", the only schedule
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # discriminative fine-tuning scales each group

    def _augment_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's images augmented on the rows where the image is present (all rows without a flag)."""
        images = batch[B.IMAGE]
        out = augment(images, self._augment_rng, self.config.image_augmentation)
        present = batch.get(B.present_key("image"))
        if present is not None:
            out = torch.where(present.view(-1, *([1] * (images.dim() - 1))), out, images)
        return out

    def _finish(self) -> None:
        h = self.history
        stoppers = [cb for cb in self._active if isinstance(cb, EarlyStopping)]
        h.stopped_early = any(cb.stopped_epoch is not None for cb in stoppers)
        same = [cb for cb in stoppers if cb.monitor == self.monitor]
        if same:
            h.best_epoch = same[0].best_epoch
        elif self.monitor is not None and h.train_loss:
            values = np.array([np.nan if v is None else v for v in self._monitored()], dtype=np.float64)
            if not np.isnan(values).all():
                signed = values if monitor_mode(self.monitor) == "max" else -values
                h.best_epoch = int(np.nanargmax(signed))

    def _monitored(self) -> list:
        h = self.history
        if self.monitor == "val_loss":
            return h.val_loss
        if self.monitor in h.metrics:
            return h.metrics[self.monitor]
        return h.val_metric

    # ----------------------------------------------------------------------------------------------- predict
    def predict(self, model: nn.Module, data: ArrayDataset, head_kind: str | None = None) -> np.ndarray:
        """Model outputs on ``data`` in eval mode without gradients (the model's train/eval mode is restored).

        Parameters
        ----------
        model : nn.Module
            Moved to the configured device (``config.device``).
        data : ArrayDataset
            A ``"target"`` array, if present, is ignored.
        head_kind : str, optional
            Default: the head kind of this trainer's last ``fit``.

        Returns
        -------
        ndarray of float32
            binary: [n] probabilities; multiclass: [n, K] softmax; multilabel: [n, K] sigmoid; regression: values.

        Raises
        ------
        ValueError
            If ``head_kind`` is not given and this trainer has not been fitted, or ``data`` is empty.
        TypeError
            If ``data`` is not an ArrayDataset.
        """
        kind = head_kind if head_kind is not None else self.head_kind
        if kind is None:
            raise ValueError("predict needs head_kind: pass head_kind=... or call fit on this trainer first.")
        check_head_kind(kind)
        if not isinstance(data, ArrayDataset):
            raise TypeError(f"predict expects an ArrayDataset; got {type(data).__name__}.")
        if len(data) == 0:
            raise ValueError("predict got an empty dataset (0 samples).")
        self.device = resolve_device(self.config.device)
        self._amp = self.config.mixed_precision and self.device.type == "cuda"
        state = StepState(device=self.device, eval_batch_size=2 * self.config.batch_size, autocast=self._autocast)
        with self._threads():
            outputs, _ = infer(model.to(self.device), data.without(B.TARGET), kind, state)
        return outputs

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The trainer's own resumable state (epoch, step, history, RNG states, config); plain values and tensors."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "should_stop": self.should_stop,
            "head_kind": self.head_kind,
            "history": self.history.to_dict(),
            "numpy_rng": self._rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "augment_rng": self._augment_rng.get_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "config": self.config.model_dump(mode="json"),
        }

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write model, optimizer, scaler, loss-term, sampler, trainer and callback states to ``path`` (atomic;
        loadable with ``torch.load(path, weights_only=True)``). Only valid during ``fit`` (e.g. from a callback)."""
        ckpt.save(self, path)

    def resume_from(self, checkpoint_path: str | os.PathLike) -> Trainer:
        """Load a checkpoint written by :class:`Checkpoint`; the next ``fit`` continues from the epoch after it.

        Call ``fit`` with a model of the same architecture and the same data; with the same config, loss terms and
        callbacks the result equals an uninterrupted run. Returns ``self``.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        ValueError
            If the file is not a healthfusion training checkpoint (or a newer version of one).
        """
        self._resume_state = ckpt.load(checkpoint_path)
        return self

    # --------------------------------------------------------------------------------------------- internals
    def _resolve_monitor(self, kind: str) -> str:
        monitor = self.config.monitor or self.loss.default_monitor()
        if monitor not in self.metric_names:
            logged = [n for n in self.metric_names if n != "train_loss"]
            raise ValueError(f"monitor={monitor!r} is not logged by this fit ({kind} head, loss terms "
                             f"{[t.name for t in self.loss.terms]}); use one of {logged} (or None for the default).")
        return monitor

    def _check_val(self, val: ArrayDataset, kind: str) -> None:
        if len(val) == 0:
            raise ValueError("The val dataset is empty (0 samples).")
        for term in self.loss.terms:
            if isinstance(term, SupervisedLoss):
                from healthfusion.training.losses.supervised import check_dataset

                check_dataset(val, "val", term.head_kind)

    def _collect_callbacks(self, has_val: bool) -> list[Callback]:
        cbs = list(self.callbacks)
        if has_val and self.config.patience is not None and not any(isinstance(c, EarlyStopping) for c in cbs):
            cbs.insert(0, EarlyStopping(monitor=self.monitor, mode=monitor_mode(self.monitor),
                                        patience=self.config.patience))
        if self.config.progress and not any(isinstance(c, ProgressCallback) for c in cbs):
            cbs.append(ProgressCallback())
        return [c for c in cbs if not isinstance(c, Checkpoint)] + [c for c in cbs if isinstance(c, Checkpoint)]

    def _autocast(self):
        if self._amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _threads(self):
        return torch_threads(self.config.num_threads)


def _epoch_loss(parts_log: list[list]) -> float:
    """The epoch's ``train_loss``: per term, the weighted mean of its batch losses; summed over terms."""
    if not parts_log:
        return float("nan")
    total = 0.0
    for j in range(len(parts_log[0])):
        losses = torch.stack([p[j][0] for p in parts_log])
        weights = [p[j][1] for p in parts_log]
        if weights[0] is None:
            total += losses.mean().item()
            continue
        w = torch.stack([x.float() for x in weights])
        n = w.sum().item()
        total += (losses * w).sum().item() / n if n > 0 else float("nan")
    return total
