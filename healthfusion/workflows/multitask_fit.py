"""Fitting of the multitask workflow's models on the one trainer, with a progress bar per fit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from healthfusion.models.multitask import MultitaskModel
from healthfusion.training import checkpoint
from healthfusion.training.callbacks import Callback
from healthfusion.training.config import TrainingHistory
from healthfusion.training.losses.multitask import MultitaskObjective
from healthfusion.training.trainer import Trainer


class FitProgress:
    """Rich progress over every training of the run (one bar per training, advanced per epoch)."""

    def __init__(self, console):
        self.console = console
        self.bar = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def fit(self, description: str, model, train, val, config, seed: int, weights,
            checkpoints: Path | None = None, resume: bool = False) -> dict:
        """:func:`fit_model` with one bar of this display advanced per epoch."""
        bars = []
        if self.bar is not None:
            bars.append(_EpochBar(self.bar, self.bar.add_task(description, total=config.training.max_epochs, info="")))
        return fit_model(model, train, val, config, seed, weights, callbacks=bars, checkpoints=checkpoints,
                         resume=resume)


def fit_model(model: MultitaskModel, train, val, config, seed: int, weights,
              callbacks: Sequence[Callback] = (), checkpoints: Path | None = None, resume: bool = False) -> dict:
    """Train ``model`` in place with the one trainer and the multitask objective of ``config`` (seed ``seed``);
    returns the history as a dict, with ``task_weights`` at the best epoch. ``checkpoints``: folder for this fit's
    newest checkpoint, from which ``resume`` continues."""
    training = config.training.model_copy(update={"seed": seed})
    term = MultitaskObjective(config.objective, weights)
    stop = [term.early_stopping(training.patience, model.config.tasks)] if training.patience is not None else []
    trainer = Trainer(training, [*stop, *callbacks], loss=term)
    if checkpoints is not None:
        checkpoint.resumable(trainer, checkpoints, resume)
    history = trainer.fit(model, train, val)
    model.eval()
    return _history_record(history)


class _EpochBar(Callback):
    """Advances one bar of the run's progress display per epoch."""

    def __init__(self, bar, task):
        self.bar, self.task = bar, task

    def on_epoch_end(self, trainer) -> None:
        self.bar.update(self.task, completed=trainer.epoch + 1, info=f"val {trainer.metrics.get('val_loss', 0):.3f}")

    def on_fit_end(self, trainer) -> None:
        self.bar.update(self.task, completed=trainer.config.max_epochs)


def _history_record(history: TrainingHistory) -> dict:
    record = history.to_dict()
    best = history.best_epoch
    weights = {k.split(":", 1)[1]: v for k, v in history.metrics.items() if k.startswith("weight:")}
    record["task_weights"] = {k: v[best if best is not None else -1] for k, v in weights.items()}
    return record
