"""Fine-tuning strategies for models with pretrained parts: which parameters train, and at what learning rate.

The pretrained part is named by parameter-name prefixes (``modules``; default ``("encoders",)``, every encoder
of a :class:`~healthfusion.models.hybrid.HybridModel`; ``("encoders.ts",)`` only its time-series encoder). Inside
each pretrained module every parameterised layer is a *block* (an LSTM's stacked layers count separately), ordered
from the input to the output; the rest of the model (fusion, FC layers, head) is the *top*.

=====================  ==========================================================================================
strategy               behaviour
=====================  ==========================================================================================
``full``               everything trains at ``lr`` (the default; the same as no fine-tuning config)
``linear_probe``       the pretrained modules are frozen for the whole fit (no gradient, no weight decay, and
                       kept in eval mode so batch-norm statistics and dropout do not change them); only the top
                       trains
``gradual_unfreeze``   epoch 0 trains the top only; every ``unfreeze_every`` epochs one more block of each
                       pretrained module is unfrozen, from its output end down to its input (ULMFiT)
``discriminative``     everything trains; a block ``k`` steps below the top trains at ``lr * lr_decay ** k``
=====================  ==========================================================================================

Example ``training:`` section of a run config::

    training:
      finetune: {strategy: gradual_unfreeze, unfreeze_every: 2}
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

_LSTM_LAYER = re.compile(r"_l(\d+)")


class FinetuneConfig(BaseModel):
    """How a model with pretrained modules is fine-tuned (see the module docstring).

    Attributes
    ----------
    strategy : {"full", "linear_probe", "gradual_unfreeze", "discriminative"}, default "full"
    modules : tuple of str, default ("encoders",)
        Dotted names of the pretrained submodules (prefixes of parameter names).
    unfreeze_every : int, default 1
        ``gradual_unfreeze``: epochs between two unfreezing steps.
    lr_decay : float, default 0.5
        ``discriminative``: learning-rate factor per block below the top (0 < lr_decay <= 1).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["full", "linear_probe", "gradual_unfreeze", "discriminative"] = "full"
    modules: tuple[str, ...] = Field(("encoders",), min_length=1)
    unfreeze_every: int = Field(1, ge=1)
    lr_decay: float = Field(0.5, gt=0.0, le=1.0)


def _blocks(module: nn.Module, prefix: str) -> list[list[str]]:
    """Parameter names of ``module`` (full names under ``prefix``) grouped into blocks, input end first."""
    blocks: list[list[str]] = []
    for name, sub in module.named_modules():
        own = [n for n, _ in sub.named_parameters(recurse=False)]
        if not own:
            continue
        full = f"{prefix}.{name}" if name else prefix
        if isinstance(sub, nn.LSTM | nn.GRU | nn.RNN):
            layers: dict[int, list[str]] = defaultdict(list)
            for n in own:
                match = _LSTM_LAYER.search(n)
                layers[int(match.group(1)) if match else 0].append(f"{full}.{n}")
            blocks.extend(layers[k] for k in sorted(layers))
        else:
            blocks.append([f"{full}.{n}" for n in own])
    return blocks


def _units(model: nn.Module, modules: tuple[str, ...]) -> dict[str, nn.Module]:
    """Each pretrained unit by dotted name: a ModuleDict prefix stands for each of its children."""
    units: dict[str, nn.Module] = {}
    for prefix in modules:
        try:
            sub = model.get_submodule(prefix)
        except AttributeError:
            tops = [n for n, _ in model.named_children()]
            raise ValueError(
                f"finetune.modules names {prefix!r}, which the model does not have (top-level modules: {tops}); "
                "use dotted names such as 'encoders' or 'encoders.ts'."
            ) from None
        if isinstance(sub, nn.ModuleDict):
            units.update({f"{prefix}.{k}": v for k, v in sub.items()})
        else:
            units[prefix] = sub
    return units


class FineTuner:
    """Applies a :class:`FinetuneConfig` to one model during a fit (used by the trainer).

    Parameters
    ----------
    model : nn.Module
    config : FinetuneConfig

    Attributes
    ----------
    depth : dict of str -> int
        Blocks below the top of each pretrained parameter (1 = the block right under the top); 0 for the top.

    Raises
    ------
    ValueError
        If a name in ``config.modules`` is not a submodule of ``model`` or holds no parameters.
    """

    def __init__(self, model: nn.Module, config: FinetuneConfig):
        self.model = model
        self.config = config
        self.units = _units(model, config.modules)
        self.depth: dict[str, int] = {n: 0 for n, _ in model.named_parameters()}
        for name, unit in self.units.items():
            blocks = _blocks(unit, name)
            if not blocks:
                raise ValueError(f"finetune.modules: {name!r} has no parameters to fine-tune.")
            for k, block in enumerate(reversed(blocks), start=1):
                for n in block:
                    self.depth[n] = k
        self._initial = {n: p.requires_grad for n, p in model.named_parameters()}

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer parameter groups, one per depth, each with its ``lr`` and ``lr_scale``."""
        by_depth: dict[int, list[nn.Parameter]] = defaultdict(list)
        for n, p in self.model.named_parameters():
            by_depth[self.depth[n]].append(p)
        decay = self.config.lr_decay if self.config.strategy == "discriminative" else 1.0
        return [{"params": by_depth[d], "lr": lr * decay**d, "lr_scale": decay**d, "depth": d}
                for d in sorted(by_depth)]

    def trainable_depth(self, epoch: int) -> int | None:
        """Deepest trainable block depth at ``epoch`` (None: every block)."""
        strategy = self.config.strategy
        if strategy == "linear_probe":
            return 0
        if strategy == "gradual_unfreeze":
            return epoch // self.config.unfreeze_every
        return None

    def start_epoch(self, epoch: int) -> None:
        """Set ``requires_grad`` of the pretrained parameters for ``epoch``."""
        limit = self.trainable_depth(epoch)
        for n, p in self.model.named_parameters():
            if self.depth[n] > 0:
                p.requires_grad_(self._initial[n] and (limit is None or self.depth[n] <= limit))

    def freeze_modes(self) -> None:
        """Put frozen pretrained modules in eval mode (call after ``model.train()``): a fully frozen unit as a
        whole (its dropout too), otherwise each layer whose parameters are all frozen (batch-norm statistics)."""
        for unit in self.units.values():
            params = list(unit.parameters())
            if params and not any(p.requires_grad for p in params):
                unit.eval()
                continue
            for sub in unit.modules():
                own = list(sub.parameters(recurse=False))
                if own and not any(p.requires_grad for p in own):
                    sub.eval()

    def restore(self) -> None:
        """Give every parameter back the ``requires_grad`` it had before the fit."""
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._initial[n])
