"""Resumable training checkpoints: model, optimiser, scaler, loss terms, trainer, sampler and callback states.

Written with ``torch.save`` of tensors and plain values only (loadable with ``torch.load(path,
weights_only=True)``), atomically (temporary file + rename). Used by :class:`~healthfusion.training.trainer.Trainer`
(``save_checkpoint`` / ``resume_from``); the :class:`~healthfusion.training.callbacks.Checkpoint` callback writes
one every few epochs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from healthfusion.training.callbacks import Callback

if TYPE_CHECKING:
    from healthfusion.training.trainer import Trainer

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "healthfusion.training.checkpoint"
CHECKPOINT_VERSION = 1


def callback_keys(callbacks: Sequence[Callback]) -> list[str]:
    """One key per callback: its class name, with ``#k`` for the k-th repeat of a class."""
    seen: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        name = type(cb).__name__
        keys.append(name if name not in seen else f"{name}#{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return keys


def save(trainer: Trainer, path: str | os.PathLike) -> None:
    """Write ``trainer``'s whole resumable state to ``path`` (atomic)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer._scaler.state_dict() if trainer._scaler is not None else None,
        "loss": trainer.loss.state_dict(),
        "sampler": trainer._sampler.state_dict() if trainer._sampler is not None else None,
        "trainer": trainer.state_dict(),
        "callbacks": {k: cb.state_dict() for k, cb in zip(callback_keys(trainer._active), trainer._active,
                                                           strict=True)},
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def latest(directory: str | os.PathLike) -> Path | None:
    """The newest ``epoch_XXXX.pt`` checkpoint in ``directory`` (None if there is none or no such folder)."""
    found = sorted(Path(directory).glob("epoch_*.pt")) if Path(directory).is_dir() else []
    return found[-1] if found else None


def resumable(trainer: Trainer, directory: str | os.PathLike, resume: bool) -> Trainer:
    """Give ``trainer`` a :class:`Checkpoint` callback writing into ``directory`` (newest kept) and, with
    ``resume``, make its next fit continue from the newest checkpoint there (a fit that had finished restores
    its final state and returns at once). The one resume mechanism of the ``transfer``, ``multitask`` and
    ``pretrain`` commands. Returns ``trainer``."""
    from healthfusion.training.callbacks import Checkpoint

    trainer.callbacks.append(Checkpoint(directory, keep_last=1))
    found = latest(directory) if resume else None
    if found is not None:
        logger.info("Resuming from %s.", found)
        trainer.resume_from(found)
    return trainer


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a healthfusion training checkpoint (or a newer version of one).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a healthfusion training checkpoint (written by the Checkpoint callback).")
    if state["version"] > CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {state['version']}; this healthfusion reads up to "
                         f"{CHECKPOINT_VERSION}. Upgrade healthfusion.")
    return state


def restore(trainer: Trainer, state: dict[str, Any]) -> None:
    """Load ``state`` into a trainer whose fit has built its model, optimiser and loss terms."""
    from healthfusion.training.config import TrainingHistory

    st = state["trainer"]
    if st.get("head_kind") != trainer.head_kind:
        raise ValueError(f"The checkpoint was trained with head_kind={st.get('head_kind')!r}; fit was called with "
                         f"{trainer.head_kind!r}. Pass the same head_kind.")
    changed = {k for k, v in trainer.config.model_dump(mode="json").items() if st["config"].get(k) != v}
    if changed:
        logger.warning("Resuming with a config that differs from the checkpoint's in %s.", sorted(changed))
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if state.get("loss"):
        trainer.loss.load_state_dict(state["loss"])
    if trainer._sampler is not None and state.get("sampler") is not None:
        trainer._sampler.load_state_dict(state["sampler"])
    if trainer._scaler is not None and state["scaler"] is not None:
        trainer._scaler.load_state_dict(state["scaler"])
    trainer.epoch, trainer.should_stop = st["epoch"], st["should_stop"]
    trainer.start_epoch = trainer.epoch + 1
    trainer.step = st.get("step", 0)
    trainer.history = TrainingHistory.from_dict(st["history"])
    trainer._rng.bit_generator.state = st["numpy_rng"]
    torch.set_rng_state(st["torch_rng"])
    if st.get("augment_rng") is not None:  # absent from checkpoints written before image augmentation
        trainer._augment_rng.set_state(st["augment_rng"])
    if st["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda_rng"])
    logger.info("Resuming from epoch %d.", trainer.start_epoch)


def restore_callbacks(callbacks: Sequence[Callback], states: dict[str, Any]) -> None:
    """Load each callback's state (warning about callbacks without state and states without callback)."""
    keys = callback_keys(callbacks)
    for key, cb in zip(keys, callbacks, strict=True):
        if key in states:
            cb.load_state_dict(states[key])
        elif cb.state_dict():
            logger.warning("The checkpoint has no state for callback %s; it starts fresh.", key)
    unused = sorted(set(states) - set(keys))
    if unused:
        logger.warning("The checkpoint holds state for callbacks this trainer lacks: %s.", unused)
