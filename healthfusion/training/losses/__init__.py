"""Loss terms: what a training mode adds to the one loop of :class:`~healthfusion.training.trainer.Trainer`.

The trainer owns the engineering (device, mixed precision, optimiser, schedules, clipping, callbacks, early
stopping, checkpoints, history, progress); a *loss term* owns the maths of one objective. Supervised training,
domain adaptation, multitask learning and self-supervised pretraining are the same loop with different terms, and
terms compose: a transfer run with DANN and MMD is ``[SupervisedLoss("binary"), MMDLoss(...), DANNLoss(...)]``.

The interface (every method but :meth:`LossTerm.compute` has a no-op default)::

    class MyTerm(LossTerm):
        name = "my_term"
        sources = ()                         # auxiliary batch streams read from state.batches (e.g. "source")
        def setup(self, model, train, state): ...        # once per fit, before the optimiser is built
        def on_epoch_start(self, state): ...             # schedules (state.epoch, state.progress)
        def compute(self, model, batch, state) -> dict:  # one training step
            return {"loss": <0-dim tensor>, "weight": <optional 0-dim>, "my_metric": <0-dim or float>}
        def validation_names(self) -> tuple[str, ...]: ...  # what validate() returns (known before the loop)
        def validate(self, model, data, state) -> dict[str, float]: ...  # once per epoch on the val set

``compute`` returns the term's *contribution* to the objective under ``"loss"`` (already weighted), an optional
``"weight"`` with which the epoch's ``train_loss`` averages it over batches (default 1 per batch; the supervised
term uses its number of valid targets, so ``train_loss`` is the exact per-target mean), and any other named values,
which the trainer averages over the epoch's batches and records in ``history.metrics``; ``"skip": True`` makes the
trainer skip this step's backward pass and optimiser step (a batch with nothing to learn from). A term with parameters
(e.g. learned task weights) registers them as an ``nn.Module``; the trainer optimises and checkpoints them with
the model. Validation value names start with ``val_`` when early stopping may monitor them (``TrainerConfig.monitor``
accepts only such names); ``"val_loss"`` is summed over terms, other names must be unique.

Register a new term with one line in ``_registry`` so :func:`get_loss_term` can build it by name.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from healthfusion.features.dataset import ArrayDataset


@dataclass
class StepState:
    """What the trainer tells a loss term about where training is.

    Attributes
    ----------
    epoch : int
        0-based epoch (``-1`` before the first).
    max_epochs : int
    step : int
        0-based optimiser step over the whole fit (continues across epochs and after a resume).
    total_steps : int
        Steps of the whole fit (``max_epochs`` x batches per epoch, or ``max_steps``).
    batches : dict of str -> dict of Tensor
        This step's batches of the auxiliary sources (see :class:`~healthfusion.training.sampling.SourceSampler`),
        on the training device, without their ``"target"`` arrays.
    device : torch.device
    seed : int
    eval_batch_size : int
        Batch size for validation passes.
    autocast : callable
        ``with state.autocast(): ...`` runs under the fit's mixed-precision setting.
    """

    epoch: int = -1
    max_epochs: int = 1
    step: int = 0
    total_steps: int = 1
    batches: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    eval_batch_size: int = 128
    autocast: Callable[[], Any] = contextlib.nullcontext
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def progress(self) -> float:
        """Training progress in [0, 1]: ``step / (total_steps - 1)`` (schedules such as DANN's use it)."""
        return min(self.step / max(self.total_steps - 1, 1), 1.0)

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` computed once per step and shared between terms (e.g. the source representation that both
        the DANN and the MMD term need)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def new_step(self, step: int, batches: dict[str, dict[str, torch.Tensor]]) -> None:
        """Start optimiser step ``step`` with these auxiliary batches (clears the shared cache)."""
        self.step, self.batches = step, batches
        self._cache.clear()


class LossTerm(nn.Module):
    """Base class of a loss term (see the module docstring); subclasses implement :meth:`compute`."""

    name: str = "term"
    sources: tuple[str, ...] = ()

    def setup(self, model: nn.Module, train: ArrayDataset, state: StepState) -> None:
        """Called once per fit before the optimiser is built (check the data, derive class weights, ...).

        Raises
        ------
        ValueError
            If ``train`` lacks what the term needs (the message names the array and the fix).
        """

    def on_epoch_start(self, state: StepState) -> None:
        """Called before each epoch's first step."""

    def compute(self, model: nn.Module, batch: dict[str, torch.Tensor], state: StepState) -> dict[str, Any]:
        """One training step's ``{"loss": 0-dim tensor, ...}`` (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute(model, batch, state).")

    def default_monitor(self) -> str | None:
        """The metric early stopping watches when the config names none (None: no preference)."""
        return None

    def validation_names(self) -> tuple[str, ...]:
        """Names of what :meth:`validate` returns (empty: the term adds nothing to validation)."""
        return ()

    def validate(self, model: nn.Module, data: ArrayDataset, state: StepState) -> dict[str, float]:
        """Validation values on ``data`` (model in eval mode, no gradients); empty by default."""
        return {}


class Losses(nn.Module):
    """Several terms as one: the sum of their losses; their metrics and validation values merged.

    Raises
    ------
    TypeError
        If a member is not a :class:`LossTerm`.
    ValueError
        If there is no term.
    """

    def __init__(self, terms: Sequence[LossTerm]):
        super().__init__()
        if not terms:
            raise ValueError("A fit needs at least one loss term.")
        bad = [type(t).__name__ for t in terms if not isinstance(t, LossTerm)]
        if bad:
            raise TypeError(f"Loss terms must subclass healthfusion.training.losses.LossTerm; got {bad}.")
        self.terms = nn.ModuleList(terms)

    def validation_names(self) -> tuple[str, ...]:
        """Every validation value the terms report (call after their ``setup``).

        Raises
        ------
        ValueError
            If two terms report the same name other than ``val_loss``.
        """
        names: list[str] = []
        for term in self.terms:
            for n in term.validation_names():
                if n in names and n != "val_loss":
                    raise ValueError(f"Two loss terms report the validation value {n!r}; rename one.")
                names.append(n)
        return tuple(dict.fromkeys(names))

    @property
    def sources(self) -> tuple[str, ...]:
        """Every auxiliary source any term reads, in the order the terms declare them."""
        return tuple(dict.fromkeys(s for t in self.terms for s in t.sources))

    def default_monitor(self) -> str:
        for term in self.terms:
            if term.default_monitor() is not None:
                return term.default_monitor()
        return "val_loss"

    def compute(self, model, batch, state) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]],
                                                     dict[str, Any]]:
        """``(total loss, [(loss, weight) per term], merged metrics)`` of one step; ``metrics["skip"]`` is True
        when a term asks to skip the optimiser step (nothing to learn from this batch)."""
        total, parts, metrics, skip = None, [], {}, False
        for term in self.terms:
            out = term.compute(model, batch, state)
            if "loss" not in out:
                raise ValueError(f"Loss term {term.name!r} returned no 'loss' (keys {sorted(out)}).")
            loss = out["loss"]
            weight = out.get("weight")
            parts.append((loss.detach().float(), None if weight is None else torch.as_tensor(weight).detach()))
            total = loss if total is None else total + loss
            skip = skip or bool(out.get("skip", False))
            metrics.update({k: v for k, v in out.items() if k not in ("loss", "weight", "skip")})
        if skip:
            metrics["skip"] = True
        return total, parts, metrics

    @staticmethod
    def epoch_loss(parts_log: list[list]) -> float:
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

    def validate(self, model, data, state) -> dict[str, float]:
        out: dict[str, float] = {}
        for term in self.terms:
            values = term.validate(model, data, state)
            for k, v in values.items():
                out[k] = out.get(k, 0.0) + v if k == "val_loss" else v
        return out


def _registry() -> dict[str, Callable[..., LossTerm]]:
    from healthfusion.training.losses.dann import DANNLoss
    from healthfusion.training.losses.mmd import MMDLoss
    from healthfusion.training.losses.multitask import MultitaskObjective
    from healthfusion.training.losses.pretraining import PretrainingLoss
    from healthfusion.training.losses.proximal import ProximalLoss
    from healthfusion.training.losses.supervised import SupervisedLoss

    return {"supervised": SupervisedLoss, "dann": DANNLoss, "mmd": MMDLoss, "multitask": MultitaskObjective,
            "pretraining": PretrainingLoss, "proximal": ProximalLoss}


def get_loss_term(name: str, **params: Any) -> LossTerm:
    """Build the registered loss term ``name`` with ``params``.

    Raises
    ------
    ValueError
        On an unknown name (with the closest registered names).
    """
    registry = _registry()
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown loss term {name!r}; registered: {sorted(registry)}.{hint}")
    return registry[name](**params)


def as_losses(loss: LossTerm | Sequence[LossTerm] | Mapping | None) -> Losses | None:
    """``Losses`` from one term or a sequence (None stays None)."""
    if loss is None or isinstance(loss, Losses):
        return loss
    if isinstance(loss, LossTerm):
        return Losses([loss])
    return Losses(list(loss))


__all__ = ["LossTerm", "Losses", "StepState", "as_losses", "get_loss_term"]
