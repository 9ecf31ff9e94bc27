"""Callbacks: small objects the :class:`~healthfusion.training.trainer.Trainer` calls at fixed points of ``fit``.

Hooks are no-ops by default and receive the trainer, which exposes ``config``, ``model``, ``optimizer``,
``epoch`` (0-based), ``start_epoch``, ``num_batches`` (of the current epoch), ``metrics`` (the last epoch's
``{"train_loss", "val_loss", <head metric>}``), ``metric_names``, ``monitor``, ``history`` and ``should_stop``.
Order inside ``fit``::

    on_fit_start -> [on_epoch_start -> on_batch_end x num_batches -> on_epoch_end] x epochs -> on_fit_end
    (on_exception instead of on_fit_end if fit raises, Ctrl-C included; the exception is then re-raised)

A callback that wants training to stop sets ``trainer.should_stop = True``; the trainer finishes the epoch's
callbacks and leaves the loop. Callback state goes into checkpoints through ``state_dict``/``load_state_dict``
(tensors and plain Python values only, so checkpoints load with ``torch.load(..., weights_only=True)``); on
resume, states are loaded after ``on_fit_start``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from healthfusion.files import display_path

if TYPE_CHECKING:
    from healthfusion.training.trainer import Trainer

logger = logging.getLogger(__name__)


class Callback:
    """Base class: every hook does nothing; ``state_dict`` is empty."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once before the first epoch (after the trainer restored a checkpoint, if resuming)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Called before each epoch; ``trainer.epoch`` and ``trainer.num_batches`` are set."""

    def on_batch_end(self, trainer: Trainer, batch_index: int) -> None:
        """Called after each optimiser step. Avoid reading tensor values here: that forces a device sync."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """Called after each epoch's validation; ``trainer.metrics`` holds the epoch's values."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called once after the last epoch."""

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        """Called if ``fit`` raises (including KeyboardInterrupt), before the exception propagates."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint: tensors and plain Python values only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) by more than ``min_delta`` in ``mode`` ("max"/"min").

    A NaN value never improves.
    """
    if math.isnan(value):
        return False
    if best is None:
        return True
    if mode == "max":
        return value > best + min_delta
    return value < best - min_delta


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for ``patience`` epochs; restore the best weights at the end.

    Parameters
    ----------
    monitor : str, default "val_auroc"
        A name in ``trainer.metric_names`` (``"val_loss"`` or the head metric; see
        :mod:`healthfusion.training.monitoring`).
    mode : {"max", "min"}, default "max"
    patience : int, default 8
        Epochs without improvement tolerated before ``trainer.should_stop`` is set.
    min_delta : float, default 0.0
        An improvement must exceed the best value by more than this. A NaN value never improves.
    restore_best_weights : bool, default True
        Load the best epoch's weights into the model in ``on_fit_end``.
    min_epochs : int, default 0
        Never stop before this 0-based epoch (e.g. a warm-up after which a loss term changes).

    Attributes
    ----------
    best_score : float or None
    best_epoch : int or None
        0-based epoch of ``best_score``.
    stopped_epoch : int or None
        Epoch at which ``should_stop`` was set.

    Raises
    ------
    ValueError
        At fit start, if ``mode``/``patience``/``min_delta`` are invalid or ``monitor`` is not logged.
    """

    def __init__(
        self,
        monitor: str = "val_auroc",
        mode: str = "max",
        patience: int = 8,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
        min_epochs: int = 0,
    ):
        self.min_epochs = min_epochs
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best_weights = restore_best_weights
        self._reset()

    def _reset(self) -> None:
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.wait = 0
        self._best_weights: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping mode must be 'max' or 'min'; got {self.mode!r}.")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"EarlyStopping patience must be an int >= 1; got {self.patience!r}.")
        if not self.min_delta >= 0:
            raise ValueError(f"EarlyStopping min_delta must be >= 0; got {self.min_delta!r}.")
        if self.monitor not in trainer.metric_names:
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, but this fit logs {list(trainer.metric_names)}. "
                "Pass validation data to fit, or monitor one of the logged metrics."
            )
        self._reset()

    def _improved(self, value: float) -> bool:
        return improves(value, self.best_score, self.mode, self.min_delta)

    def on_epoch_end(self, trainer: Trainer) -> None:
        value = float(trainer.metrics[self.monitor])
        if self._improved(value):
            self.best_score, self.best_epoch, self.wait = value, trainer.epoch, 0
            if self.restore_best_weights:
                self._best_weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience and trainer.epoch >= self.min_epochs:
            self.stopped_epoch = trainer.epoch
            trainer.should_stop = True
            logger.info(
                "Early stopping at epoch %d: %s has not improved for %d epochs (best %.4f at epoch %s).",
                trainer.epoch,
                self.monitor,
                self.wait,
                self.best_score if self.best_score is not None else float("nan"),
                self.best_epoch,
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best_weights and self._best_weights is not None:
            trainer.model.load_state_dict(self._best_weights)
            logger.info(
                "Restored the weights of epoch %s (%s=%.4f).", self.best_epoch, self.monitor, self.best_score
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "wait": self.wait,
            "best_weights": self._best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = state["best_score"]
        self.best_epoch = state["best_epoch"]
        self.stopped_epoch = state["stopped_epoch"]
        self.wait = state["wait"]
        self._best_weights = state["best_weights"]


class Checkpoint(Callback):
    """Write a resumable checkpoint every ``every_n_epochs`` epochs to ``directory/epoch_XXXX.pt``.

    A checkpoint holds the model, optimizer (and gradient scaler), trainer and callback states, written by
    :meth:`Trainer.save_checkpoint` with ``torch.save`` of tensors and plain values only, so it loads with
    ``torch.load(path, weights_only=True)``. Resume with ``Trainer(config, callbacks).resume_from(path)`` followed
    by ``fit`` with the same data. ``XXXX`` is the 0-based epoch; the write is atomic (temporary file + rename).

    Parameters
    ----------
    directory : str or Path
        Created if missing.
    every_n_epochs : int, default 1
    keep_last : int or None, default None
        Delete older checkpoints of this directory so that only the newest ``keep_last`` remain (None: keep all).

    Attributes
    ----------
    last_path : str or None
        The most recent checkpoint written.

    Raises
    ------
    ValueError
        At fit start, if ``every_n_epochs < 1``.
    """

    def __init__(self, directory: str | os.PathLike, every_n_epochs: int = 1, keep_last: int | None = None):
        self.directory = directory
        self.every_n_epochs = every_n_epochs
        self.keep_last = keep_last
        self.last_path: str | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not isinstance(self.every_n_epochs, int) or self.every_n_epochs < 1:
            raise ValueError(f"Checkpoint every_n_epochs must be an int >= 1; got {self.every_n_epochs!r}.")
        if self.keep_last is not None and (not isinstance(self.keep_last, int) or self.keep_last < 1):
            raise ValueError(f"Checkpoint keep_last must be an int >= 1 or None; got {self.keep_last!r}.")
        Path(self.directory).mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if (trainer.epoch + 1) % self.every_n_epochs:
            return
        path = Path(self.directory) / f"epoch_{trainer.epoch:04d}.pt"
        # Record the path first so the checkpoint's own callback state already names it.
        self.last_path = str(path)
        trainer.save_checkpoint(path)
        logger.info("Saved checkpoint %s.", display_path(path))
        if self.keep_last is not None:
            for old in sorted(Path(self.directory).glob("epoch_*.pt"))[: -self.keep_last]:
                old.unlink()

    def state_dict(self) -> dict[str, Any]:
        return {"last_path": self.last_path}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_path = state["last_path"]


class ProgressCallback(Callback):
    """Rich progress bars: one over epochs (with the last train loss and monitored metric), one over batches.

    Renders whenever it is used, TTY or not (without a TTY rich prints the final state only). Pass a quiet
    ``console`` (e.g. ``rich.console.Console(file=io.StringIO())``) to silence it in tests.

    Parameters
    ----------
    console : rich.console.Console, optional
        Default: rich's console on stderr.
    transient : bool, default False
        Remove the bars when fit ends.
    """

    def __init__(self, console=None, transient: bool = False):
        self.console = console
        self.transient = transient
        self._progress = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console if self.console is not None else Console(stderr=True),
            transient=self.transient,
        )
        self._progress.start()
        self._epochs = self._progress.add_task(
            "epoch", total=trainer.config.max_epochs, completed=trainer.start_epoch, info=""
        )
        self._batches = self._progress.add_task("batch", total=None, info="")

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._progress.reset(self._batches, total=trainer.num_batches, info="")

    def on_batch_end(self, trainer: Trainer, batch_index: int) -> None:
        self._progress.advance(self._batches)

    def on_epoch_end(self, trainer: Trainer) -> None:
        info = f"train_loss={trainer.metrics['train_loss']:.4f}"
        if trainer.monitor in trainer.metrics:
            info += f" {trainer.monitor}={trainer.metrics[trainer.monitor]:.4f}"
        self._progress.update(self._epochs, completed=trainer.epoch + 1, info=info)

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_fit_end(self, trainer: Trainer) -> None:
        self._stop()

    def on_exception(self, trainer: Trainer, exception: BaseException) -> None:
        self._stop()
