"""MMD alignment (Long et al. 2015): the squared maximum mean discrepancy between the source and target
representations under a sum of Gaussian kernels, constant or ramped up over training.

The representation is ``model.encode(batch)`` of one batch of each auxiliary source per step (``"source"`` and
``"target"`` by default, see :class:`~healthfusion.training.sampling.SourceSampler`); it is computed once per step
and shared with the DANN term.

Example::

    terms = [SupervisedLoss("binary", class_weight=True), MMDLoss(weight=1.0, schedule="ramp")]
    Trainer(config, loss=terms).fit(model, train, val, sources={"source": src, "target": tgt})
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from healthfusion.training.losses import LossTerm, StepState

DEFAULT_KERNEL_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, scales: tuple[float, ...] = DEFAULT_KERNEL_SCALES,
                 bandwidth: float | None = None) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples ``x`` [n, D] and ``y`` [m, D] (biased V-statistic).

    The kernel is ``sum_s exp(-||a - b||^2 / (s * h))`` over ``scales`` s, where the bandwidth ``h`` is the median
    squared distance between all pooled points (computed without gradient) unless given. The estimate is >= 0, exactly
    0 when the two samples are the same points, and grows as the distributions move apart.

    Raises
    ------
    ValueError
        If ``x`` or ``y`` is not 2-D, they differ in width, either is empty, or a scale/bandwidth is not positive.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"gaussian_mmd expects x [n, D] and y [m, D], got {tuple(x.shape)} and {tuple(y.shape)}.")
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("gaussian_mmd needs at least one sample on each side.")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"Kernel scales must be positive; got {scales}.")
    z = torch.cat([x, y], dim=0).float()
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        off = d2.detach()[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
        h = float(off.median()) if off.numel() else 1.0
        h = h if h > 1e-12 else 1.0
    elif bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}.")
    else:
        h = float(bandwidth)
    k = sum(torch.exp(-d2 / (s * h)) for s in scales)
    n = x.shape[0]
    value = k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()
    return value.clamp_min(0.0)


def ramp(progress: float, max_value: float = 1.0, gamma: float = 10.0) -> float:
    """The DANN-style ramp ``max_value * (2 / (1 + exp(-gamma * progress)) - 1)``.

    0 at ``progress`` 0, rising smoothly towards ``max_value`` at 1 (0.9999 * max at gamma 10).

    Raises
    ------
    ValueError
        If ``progress`` is outside [0, 1] or ``max_value``/``gamma`` is negative.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}.")
    if max_value < 0 or gamma < 0:
        raise ValueError(f"max_value and gamma must be >= 0, got {max_value} and {gamma}.")
    return float(max_value * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0))


def encoded(model, state: StepState, source: str) -> torch.Tensor:
    """``model.encode`` of this step's ``source`` batch, computed once per step and shared between terms.

    Raises
    ------
    ValueError
        If the fit got no such source, or the model has no ``encode(batch)`` method.
    """
    if source not in state.batches:
        raise ValueError(f"This loss term aligns the {source!r} source, but fit got sources "
                         f"{sorted(state.batches)}; pass sources={{{source!r}: dataset, ...}} to fit.")
    if not hasattr(model, "encode"):
        raise ValueError(f"Alignment terms need a model with encode(batch) -> [B, D]; {type(model).__name__} "
                         "has none.")
    return state.shared(f"encode:{source}", lambda: model.encode(state.batches[source]))


class MMDConfig(BaseModel):
    """Settings of :class:`MMDLoss` (unknown keys are an error).

    Attributes
    ----------
    weight : float, default 1.0
    schedule : {"constant", "ramp"}, default "constant"
        ``ramp``: the weight follows :func:`ramp` with ``gamma`` over training progress, so the risk head learns
        before alignment pulls on the representation.
    gamma : float, default 10.0
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(1.0, ge=0)
    schedule: str = Field("constant", pattern="^(constant|ramp)$")
    gamma: float = Field(10.0, ge=0)


class MMDLoss(LossTerm):
    """``weight(progress) * gaussian_mmd(encode(source batch), encode(target batch))``.

    Parameters
    ----------
    weight, schedule, gamma : see :class:`MMDConfig`
    source, target : str, default "source", "target"
        Names of the two auxiliary sources.

    Logged per epoch: ``mmd`` (mean unweighted MMD over the epoch's steps).
    """

    name = "mmd"

    def __init__(self, weight: float = 1.0, schedule: str = "constant", gamma: float = 10.0,
                 source: str = "source", target: str = "target"):
        super().__init__()
        self.config = MMDConfig(weight=weight, schedule=schedule, gamma=gamma)
        self.sources = (source, target)

    def compute(self, model, batch, state) -> dict[str, Any]:
        cfg = self.config
        mmd = gaussian_mmd(encoded(model, state, self.sources[0]), encoded(model, state, self.sources[1]))
        weight = cfg.weight if cfg.schedule == "constant" else ramp(state.progress, cfg.weight, cfg.gamma)
        return {"loss": weight * mmd, "mmd": mmd.detach()}
