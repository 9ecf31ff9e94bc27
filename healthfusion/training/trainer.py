"""The training loop: any ``nn.Module`` whose ``forward(batch) -> {"logits": ...}`` on :class:`ArrayDataset` batches.

The trainer owns the engineering (device, mixed precision, optimiser, learning-rate schedule, shuffling, class
imbalance, image augmentation, validation, checkpoints, callbacks); the model owns the maths. The model receives
each batch dict of :mod:`healthfusion.features.batch` *without* its ``"target"`` key and returns a dict whose
``"logits"`` are [B] (binary, regression) or [B, K] (multiclass, multilabel, multi-output regression).

Example::

    trainer = Trainer(TrainerConfig(max_epochs=20, patience=5))
    history = trainer.fit(model, train_ds, val_ds, head_kind="binary")
    risk = trainer.predict(model, test_ds)  # [n] probabilities
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.features.image import augment
from healthfusion.training.callbacks import Callback, Checkpoint, EarlyStopping, ProgressCallback
from healthfusion.training.config import TrainerConfig, TrainingHistory, resolve_device, torch_threads
from healthfusion.training.finetune import FineTuner
from healthfusion.training.monitoring import HEAD_METRIC, head_metric, monitor_mode, resolve_monitor
from healthfusion.training.objectives import (
    Objective,
    check_head_kind,
    check_targets,
    class_weights_from_labels,
    logits_to_output,
    mean_from_terms,
)
from healthfusion.training.sampling import balanced_order, shuffled_order

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "healthfusion.training.checkpoint"
CHECKPOINT_VERSION = 1


def _logits(out: Any) -> torch.Tensor:
    if not isinstance(out, Mapping) or not isinstance(out.get("logits"), torch.Tensor):
        got = f"a dict with keys {sorted(out)}" if isinstance(out, Mapping) else type(out).__name__
        raise TypeError(f"model.forward(batch) must return a dict with a 'logits' tensor; got {got}.")
    return out["logits"]


def _augment_seed(seed: int) -> int:
    """Seed of the image-augmentation generator: derived from ``seed`` but a different stream from the one
    ``torch.manual_seed(seed)`` gives the global generator (dropout), so the two draws are not correlated."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _callback_keys(callbacks: Sequence[Callback]) -> list[str]:
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        name = type(cb).__name__
        keys.append(name if name not in seen else f"{name}#{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return keys


class Trainer:
    """Fits and applies a model on :class:`ArrayDataset` data.

    Parameters
    ----------
    config : TrainerConfig or dict, optional
        Default ``TrainerConfig()``.
    callbacks : sequence of Callback, default ()
        Called in order, except that :class:`Checkpoint` callbacks run after all others (so a checkpoint sees
        this epoch's early-stopping state). With validation data and ``config.patience`` set, an
        :class:`EarlyStopping` on the monitored metric is added first unless one is passed.

    Attributes (during and after ``fit``)
    -------------------------------------
    model, optimizer, epoch, start_epoch, num_batches, metrics, metric_names, monitor, head_kind, history,
    should_stop : see :mod:`healthfusion.training.callbacks`.
    """

    def __init__(
        self, config: TrainerConfig | Mapping[str, Any] | None = None, callbacks: Sequence[Callback] = ()
    ):
        self.config = (
            config if isinstance(config, TrainerConfig) else TrainerConfig.model_validate(config or {})
        )
        self.callbacks = list(callbacks)
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
    ) -> TrainingHistory:
        """Train ``model`` in place on ``train``, validating on ``val`` after every epoch.

        Parameters
        ----------
        model : nn.Module
            ``forward(batch: dict[str, Tensor]) -> {"logits": Tensor}``; moved to the configured device.
        train, val : ArrayDataset
            Must hold a ``"target"`` array matching ``head_kind`` (missing: NaN for floats, -1 for ints).
        head_kind : {"binary", "multiclass", "multilabel", "regression"}, default "binary"

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
            support, a monitor the head does not log, a checkpoint (``resume_from``) for another head kind, or
            ``image_augmentation`` set for a train dataset without an ``"image"`` array.
        """
        kind = check_head_kind(head_kind)
        cfg = self.config
        self._check_data(train, "train", kind)
        if val is not None:
            self._check_data(val, "val", kind)
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
        monitor = resolve_monitor(cfg.monitor, kind)
        self.device = resolve_device(cfg.device)
        self._amp = cfg.mixed_precision and self.device.type == "cuda"
        if cfg.mixed_precision and not self._amp:
            logger.warning("mixed_precision=True has no effect on %s; training in float32.", self.device)

        self.head_kind = kind
        self.monitor = monitor if val is not None else None
        self.metric_names = ("train_loss",) + (("val_loss", HEAD_METRIC[kind]) if val is not None else ())
        self.metrics: dict[str, float] = {}
        self.should_stop = False
        self.epoch, self.start_epoch, self.num_batches = -1, 0, 0
        self.history = TrainingHistory(monitor=self.monitor)

        with self._threads():
            torch.manual_seed(cfg.seed)
            self._rng = np.random.default_rng(cfg.seed)
            self._augment_rng = torch.Generator().manual_seed(_augment_seed(cfg.seed))
            self.model = model.to(self.device)
            weight = (
                class_weights_from_labels(train[B.TARGET], kind) if cfg.imbalance == "class_weight" else None
            )
            self._objective = Objective(kind, weight).to(self.device)
            self._finetuner = FineTuner(model, cfg.finetune) if cfg.finetune is not None else None
            params = self._finetuner.param_groups(cfg.lr) if self._finetuner else model.parameters()
            self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            self._scaler = torch.amp.GradScaler("cuda") if self._amp else None
            self._active = self._collect_callbacks(val is not None, monitor)
            resume, self._resume_state = self._resume_state, None
            if resume is not None:
                self._restore(resume)
            try:
                for cb in self._active:
                    cb.on_fit_start(self)
                if resume is not None:
                    self._restore_callbacks(resume["callbacks"])
                self._loop(train, val)
                self._finish()
                for cb in self._active:
                    cb.on_fit_end(self)
            except BaseException as exc:
                for cb in self._active:
                    cb.on_exception(self, exc)
                raise
            finally:
                if self._finetuner is not None:
                    self._finetuner.restore()
        return self.history

    def _loop(self, train: ArrayDataset, val: ArrayDataset | None) -> None:
        cfg = self.config
        y_train = train[B.TARGET]
        for epoch in range(self.start_epoch, cfg.max_epochs):
            if self.should_stop:
                break
            self.epoch = epoch
            start = time.perf_counter()
            if cfg.imbalance == "oversample":
                order = balanced_order(y_train, self._rng)
            else:
                order = shuffled_order(len(train), self._rng)
            self.num_batches = -(-len(order) // cfg.batch_size)
            if cfg.lr_schedule != "constant":
                self._set_lr(epoch)
            if self._finetuner is not None:
                self._finetuner.start_epoch(epoch)
            for cb in self._active:
                cb.on_epoch_start(self)
            train_loss = self._train_epoch(train, order)
            self.metrics = {"train_loss": train_loss}
            val_loss = val_metric = None
            if val is not None:
                outputs, val_loss = self._infer(self.model, val, self.head_kind, with_loss=True)
                val_metric = head_metric(self.head_kind, val[B.TARGET], outputs)
                self.metrics.update({"val_loss": val_loss, HEAD_METRIC[self.head_kind]: val_metric})
            seconds = time.perf_counter() - start
            h = self.history
            h.train_loss.append(train_loss)
            h.val_loss.append(val_loss)
            h.val_metric.append(val_metric)
            h.epoch_seconds.append(seconds)
            logger.info(
                "epoch %d/%d %s (%.2f s)",
                epoch + 1,
                cfg.max_epochs,
                " ".join(f"{k}={v:.4f}" for k, v in self.metrics.items()),
                seconds,
            )
            for cb in self._active:
                cb.on_epoch_end(self)

    def _train_epoch(self, train: ArrayDataset, order: np.ndarray) -> float:
        model, optimizer, scaler, clip = self.model, self.optimizer, self._scaler, self.config.grad_clip
        # Plain `p.grad = None` instead of optimizer.zero_grad(): same effect, without its per-call profiler hooks.
        params = [p for group in optimizer.param_groups for p in group["params"]]
        model.train()
        if self._finetuner is not None:
            self._finetuner.freeze_modes()
        totals, norms = [], []  # 0-dim tensors; summed once per epoch so batches never wait on the device
        for i, batch in enumerate(train.iter_batches(self.config.batch_size, order, device=self.device)):
            target = batch.pop(B.TARGET)
            if self.config.image_augmentation is not None:
                batch[B.IMAGE] = self._augment_images(batch)
            with self._autocast():
                logits = _logits(model(batch))
            if i == 0 and self.epoch == self.start_epoch:
                self._check_logits(logits, train)
            loss_sum, norm = self._objective.terms(logits, target)
            loss = mean_from_terms(loss_sum, norm)
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
            totals.append(loss_sum.detach())
            norms.append(norm.detach())
            for cb in self._active:
                cb.on_batch_end(self, i)
        total, n = torch.stack(totals).sum().item(), torch.stack(norms).sum().item()
        return total / n if n > 0 else float("nan")

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
        elif self.monitor is not None and h.val_metric:
            values = np.array(h.val_loss if self.monitor == "val_loss" else h.val_metric, dtype=np.float64)
            if not np.isnan(values).all():
                signed = values if monitor_mode(self.monitor) == "max" else -values
                h.best_epoch = int(np.nanargmax(signed))

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
        with self._threads():
            outputs, _ = self._infer(model.to(self.device), data, kind, with_loss=False)
        return outputs

    @torch.no_grad()
    def _infer(self, model: nn.Module, data: ArrayDataset, kind: str, with_loss: bool):
        was_training = model.training
        model.eval()
        chunks = []
        total = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        try:
            for batch in data.iter_batches(2 * self.config.batch_size, device=self.device):
                target = batch.pop(B.TARGET, None)
                with self._autocast():
                    logits = _logits(model(batch)).float()
                if with_loss and target is not None:
                    loss_sum, norm = self._objective.terms(logits, target)
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

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The trainer's own resumable state (epoch, history, RNG states, config); plain values and tensors."""
        return {
            "epoch": self.epoch,
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
        """Write model, optimizer, scaler, trainer and callback states to ``path`` (atomic; loadable with
        ``torch.load(path, weights_only=True)``). Only valid during ``fit`` (e.g. from a callback)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self._scaler.state_dict() if self._scaler is not None else None,
            "trainer": self.state_dict(),
            "callbacks": {
                k: cb.state_dict() for k, cb in zip(_callback_keys(self._active), self._active, strict=True)
            },
        }
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def resume_from(self, checkpoint_path: str | os.PathLike) -> Trainer:
        """Load a checkpoint written by :class:`Checkpoint`; the next ``fit`` continues from the epoch after it.

        Call ``fit`` with a model of the same architecture and the same data; with the same config and callbacks
        the result equals an uninterrupted run. Returns ``self``.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        ValueError
            If the file is not a healthfusion training checkpoint (or a newer version of one).
        """
        path = Path(checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"No checkpoint at {path}.")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{path} is not a healthfusion training checkpoint (written by the Checkpoint callback)."
            )
        if state["version"] > CHECKPOINT_VERSION:
            raise ValueError(
                f"{path} has checkpoint version {state['version']}; this healthfusion reads up to "
                f"{CHECKPOINT_VERSION}. Upgrade healthfusion."
            )
        self._resume_state = state
        return self

    def _restore(self, state: dict[str, Any]) -> None:
        st = state["trainer"]
        if st["head_kind"] != self.head_kind:
            raise ValueError(
                f"The checkpoint was trained with head_kind={st['head_kind']!r}; fit was called with "
                f"{self.head_kind!r}. Pass the same head_kind."
            )
        changed = {k for k, v in self.config.model_dump(mode="json").items() if st["config"].get(k) != v}
        if changed:
            logger.warning(
                "Resuming with a config that differs from the checkpoint's in %s.", sorted(changed)
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self._scaler is not None and state["scaler"] is not None:
            self._scaler.load_state_dict(state["scaler"])
        self.epoch, self.should_stop = st["epoch"], st["should_stop"]
        self.start_epoch = self.epoch + 1
        self.history = TrainingHistory.from_dict(st["history"])
        self._rng.bit_generator.state = st["numpy_rng"]
        torch.set_rng_state(st["torch_rng"])
        if st.get("augment_rng") is not None:  # absent from checkpoints written before image augmentation
            self._augment_rng.set_state(st["augment_rng"])
        if st["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        logger.info("Resuming from epoch %d.", self.start_epoch)

    def _restore_callbacks(self, states: dict[str, Any]) -> None:
        keys = _callback_keys(self._active)
        for key, cb in zip(keys, self._active, strict=True):
            if key in states:
                cb.load_state_dict(states[key])
            elif cb.state_dict():
                logger.warning("The checkpoint has no state for callback %s; it starts fresh.", key)
        unused = sorted(set(states) - set(keys))
        if unused:
            logger.warning("The checkpoint holds state for callbacks this trainer lacks: %s.", unused)

    # --------------------------------------------------------------------------------------------- internals
    def _collect_callbacks(self, has_val: bool, monitor: str) -> list[Callback]:
        cbs = list(self.callbacks)
        if (
            has_val
            and self.config.patience is not None
            and not any(isinstance(c, EarlyStopping) for c in cbs)
        ):
            cbs.insert(
                0, EarlyStopping(monitor=monitor, mode=monitor_mode(monitor), patience=self.config.patience)
            )
        if self.config.progress and not any(isinstance(c, ProgressCallback) for c in cbs):
            cbs.append(ProgressCallback())
        return [c for c in cbs if not isinstance(c, Checkpoint)] + [
            c for c in cbs if isinstance(c, Checkpoint)
        ]

    def _check_data(self, data: Any, name: str, kind: str) -> None:
        if not isinstance(data, ArrayDataset):
            raise TypeError(f"fit expects {name} as an ArrayDataset; got {type(data).__name__}.")
        if B.TARGET not in data:
            raise ValueError(
                f"The {name} dataset has no {B.TARGET!r} array; add it with ds.with_arrays(target=y)."
            )
        if len(data) == 0:
            raise ValueError(f"The {name} dataset is empty (0 samples).")
        check_targets(data[B.TARGET], kind, name=f"{name} target")

    def _check_logits(self, logits: torch.Tensor, train: ArrayDataset) -> None:
        if self.head_kind != "multiclass" or logits.dim() != 2:
            return
        y = train[B.TARGET].astype(np.float64)
        top = np.nanmax(y) if not np.isnan(y).all() else -1
        if top >= logits.shape[1]:
            raise ValueError(
                f"The train target has class id {int(top)} but the model outputs {logits.shape[1]} "
                f"logits; build the model with at least {int(top) + 1} classes."
            )

    def _autocast(self):
        if self._amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _threads(self):
        return torch_threads(self.config.num_threads)
