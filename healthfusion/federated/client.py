"""A site of a federated run: the :class:`~healthfusion.training.Trainer` on its own data, from global weights.

A :class:`Site` holds one institution's arrays (train, and optionally test) and never shares them: a round sends
it the global weights, it trains ``local_epochs`` locally (optionally with FedProx's proximal term) and returns its
new weights and sample count. Weights travel as a list of numpy arrays in ``state_dict`` order
(:func:`get_weights` / :func:`set_weights`), which is what :mod:`healthfusion.federated.aggregation` and Flower
exchange. A round is :meth:`Trainer.local_round`; FedProx adds the
:class:`~healthfusion.training.losses.proximal.ProximalLoss` term and DP-SGD the
:class:`~healthfusion.training.privacy.DPSGD` plug-in.

Example::

    site = Site("cleveland", train_ds, test_ds)
    weights, n, info = site.fit(model, global_weights, TrainerConfig(max_epochs=1), round_=3)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.training import Trainer, TrainerConfig
from healthfusion.training.losses.proximal import ProximalLoss
from healthfusion.training.losses.supervised import SupervisedLoss
from healthfusion.training.monitoring import head_metric

log = logging.getLogger(__name__)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's ``state_dict`` (parameters and buffers) as numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load ``weights`` (as from :func:`get_weights`) into ``model``; each array is cast to its tensor's dtype.

    Raises
    ------
    ValueError
        If the number of arrays or a shape differs from the model's state dict (naming the tensor).
    """
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(
            f"Got {len(weights)} weight arrays for a model with {len(state)} state tensors; the weights come from "
            "another model architecture (check that every site and the server build the same model)."
        )
    new = {}
    for (name, tensor), array in zip(state.items(), weights, strict=True):
        array = np.asarray(array)
        if tuple(array.shape) != tuple(tensor.shape):
            raise ValueError(
                f"Weight {name!r} has shape {tuple(array.shape)} but the model's is {tuple(tensor.shape)}; the "
                "weights come from another model architecture."
            )
        new[name] = torch.as_tensor(array).to(dtype=tensor.dtype)
    model.load_state_dict(new)


@dataclass
class Site:
    """One institution's data in a federated run.

    Attributes
    ----------
    name : str
    train : ArrayDataset
        Local training samples with a ``"target"`` array.
    test : ArrayDataset, optional
        Local held-out samples the site scores the global (or its personalised) model on.
    val : ArrayDataset, optional
        Local validation samples the site fits its calibration temperature on
        (:mod:`healthfusion.federated.calibration`).
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset | None = None
    val: ArrayDataset | None = None
    _privacy: Any = field(default=None, init=False, repr=False)  # (settings, DPSGD plug-in, private model copy)
    _steps_taken: int = field(default=0, init=False, repr=False)  # DP steps of this run before the state was built

    def __post_init__(self) -> None:
        for split in ("train", "test", "val"):
            data = getattr(self, split)
            if data is None:
                continue
            if not isinstance(data, ArrayDataset):
                raise TypeError(f"Site {self.name!r}: {split} must be an ArrayDataset; got {type(data).__name__}.")
            if len(data) == 0:
                raise ValueError(f"Site {self.name!r} has no {split} samples; drop the site or give it data.")

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def privacy_started(self) -> bool:
        """Whether the site holds DP state of the current run (its accountant and private model copy)."""
        return self._privacy is not None or self._steps_taken > 0

    def reset_privacy(self, steps_taken: int = 0) -> None:
        """Start the site's DP state afresh (a new run): the next private fit builds a new Opacus wrapper and
        accountant. ``steps_taken`` are DP-SGD steps this site already took in the run before a restart (the
        accountant is charged with them, at the run's noise and sampling rate, before the next round)."""
        if self._privacy is not None:
            self._privacy[1].release()
        self._privacy, self._steps_taken = None, int(steps_taken)

    def _private_state(self, model: nn.Module, privacy, batch_size: int, budget_epochs: int):
        """The site's DP-SGD plug-in and private model copy, built at its first private round and reused after:
        one Opacus wrapper, one noise calibration and one accountant per site and run."""
        from healthfusion.training.privacy import DPSGD, make_private_model

        key = (privacy, batch_size, budget_epochs)
        if self._privacy is None or self._privacy[0] != key:
            if self._privacy is not None:
                self._privacy[1].release()
            dp = DPSGD(privacy, self.num_train, batch_size, budget_epochs, keep_wrapped=True)
            if self._steps_taken:
                dp.accountant.history = [(dp.noise_multiplier, dp.sample_rate, self._steps_taken)]
            self._privacy = (key, dp, make_private_model(copy.deepcopy(model)))
        return self._privacy[1], self._privacy[2]

    def fit(
        self,
        model: nn.Module,
        weights: Sequence[np.ndarray] | None,
        config: TrainerConfig,
        *,
        round_: int = 0,
        head_kind: str = "binary",
        proximal_mu: float = 0.0,
        callbacks: Sequence = (),
        privacy=None,
        budget_epochs: int | None = None,
    ) -> tuple[list[np.ndarray], int, dict[str, float]]:
        """Train ``model`` locally for ``config.max_epochs`` epochs starting from ``weights``.

        The trainer's seed is ``config.seed + round_`` so that successive rounds shuffle differently and a rerun
        of a round is reproducible. No early stopping (there is no local validation split). ``proximal_mu > 0``
        adds FedProx's proximal term to the supervised loss.

        With ``privacy`` (a :class:`~healthfusion.training.privacy.PrivacyConfig`) the local training is DP-SGD
        on the site's private copy of the model (:func:`~healthfusion.training.privacy.make_private_model`:
        ``nn.LSTM`` -> ``DPLSTM``), built with its Opacus wrapper, noise calibration and accountant at the site's
        first private round and kept for the run (:meth:`reset_privacy` starts afresh); ``budget_epochs`` (default
        ``config.max_epochs``) is the number of epochs the site's ``target_epsilon`` must cover. The round's
        global weights are loaded into the copy and the trained ones copied back, so the weights exchanged are
        always those of ``model``.

        Returns
        -------
        (weights, num_train, info)
            The site's new weights, its number of training samples (the FedAvg weight) and
            ``{"train_loss": last epoch's loss}`` (+ ``"epsilon"`` spent so far, ``"delta"`` and ``"dp_steps"``
            (this round's DP-SGD steps), with privacy).
        """
        if weights is not None:
            set_weights(model, weights)
        if privacy is not None and proximal_mu > 0:
            raise ValueError("FedProx (proximal_mu > 0) and per-site DP-SGD cannot be combined: Opacus replaces the "
                             "gradient with the clipped, noised per-sample sum, which drops the proximal term's "
                             "gradient. Set proximal_mu: 0 or remove privacy.")
        loss = None
        if proximal_mu > 0:
            loss = [SupervisedLoss(head_kind, config.imbalance == "class_weight"), ProximalLoss(proximal_mu)]
        trained, plugins, dp = model, [], None
        if privacy is not None:
            from healthfusion.training.privacy import copy_to_plain, copy_to_private

            dp, trained = self._private_state(model, privacy, config.batch_size, budget_epochs or config.max_epochs)
            copy_to_private(model, trained)
            plugins.append(dp)
        steps_before = dp.steps if dp is not None else 0
        trainer = Trainer(config, callbacks=list(callbacks), loss=loss, plugins=plugins)
        try:
            out = trainer.local_round(trained, self.train, seed=config.seed + round_, head_kind=head_kind)
        except BaseException:
            if dp is not None:
                self.reset_privacy(dp.steps)  # unwrap; a retry rebuilds the wrapper, the accountant keeps its steps
            raise
        info = {"train_loss": float(out["metrics"]["train_loss"])}
        if dp is not None:
            copy_to_plain(trained, model)
            info.update(epsilon=dp.report()["epsilon"], delta=dp.delta, dp_steps=dp.steps - steps_before)
        return get_weights(model), self.num_train, info

    def predict(self, model: nn.Module, split: str = "test", head_kind: str = "binary") -> np.ndarray:
        """The model's outputs (binary: probabilities [n]) on the site's ``split``."""
        data = getattr(self, split)
        if data is None:
            raise ValueError(f"Site {self.name!r} has no {split} data to score.")
        return Trainer(TrainerConfig(progress=False)).predict(model, data, head_kind=head_kind)

    def evaluate(self, model: nn.Module, split: str = "test", head_kind: str = "binary") -> dict[str, float]:
        """``{"n", "accuracy", "loss", "auroc"}`` (binary; accuracy at 0.5, log loss, AUROC NaN with one class) or ``{"n", "<head
        metric>"}`` for other heads, of ``model`` on the site's ``split``."""
        data = getattr(self, split)
        out = self.predict(model, split, head_kind)
        y = data[B.TARGET]
        metrics: dict[str, float] = {"n": float(len(y))}
        if head_kind == "binary":
            keep = ~np.isnan(y.astype(np.float64))
            p, t = np.clip(out[keep].astype(np.float64), 1e-7, 1 - 1e-7), y[keep] >= 0.5
            metrics["accuracy"] = float(np.mean((p >= 0.5) == t))
            metrics["loss"] = float(-np.mean(np.where(t, np.log(p), np.log1p(-p))))
            metrics["auroc"] = float(head_metric("binary", y, out))
        else:
            metrics[head_kind] = float(head_metric(head_kind, y, out))
        return metrics
