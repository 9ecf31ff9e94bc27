"""Training losses per head kind, with missing targets masked out.

=============  ==============  =====================  ==========================================================
head kind      logits          target                 loss (mean over valid targets)
=============  ==============  =====================  ==========================================================
``binary``     [B]             [B] float 0/1          BCE with logits, optional ``pos_weight`` (shape [1])
``multiclass`` [B, K]          [B] int class          cross-entropy, optional class weights (shape [K]); the mean
                                                      is weighted like :class:`torch.nn.CrossEntropyLoss`
``multilabel`` [B, K]          [B, K] float 0/1       BCE with logits per label, optional ``pos_weight`` [K]
``regression`` [B] or [B, K]   same as logits         mean squared error
=============  ==============  =====================  ==========================================================

A target is missing when it is NaN (float targets) or negative (integer targets, ``-1`` by convention). Missing
targets add nothing to the loss and get exactly zero gradient; a batch whose targets are all missing gives a loss
of ``0`` (not NaN) that is still attached to the graph, so ``backward()`` works and yields zero gradients.

Example::

    objective = Objective("binary")
    loss = objective(torch.tensor([0.3, -1.0]), torch.tensor([1.0, float("nan")]))  # only the first counts
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

HeadKind = Literal["binary", "multiclass", "multilabel", "regression"]
HEAD_KINDS: tuple[str, ...] = get_args(HeadKind)


def check_head_kind(kind: str) -> str:
    """Return ``kind`` if it is one of :data:`HEAD_KINDS`.

    Raises
    ------
    ValueError
        If ``kind`` is not a known head kind.
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"Unknown head kind {kind!r}; expected one of {', '.join(HEAD_KINDS)}.")
    return kind


def target_mask(target: torch.Tensor) -> torch.Tensor:
    """Boolean tensor (same shape as ``target``): True where the target is present (not NaN / not negative int)."""
    if target.is_floating_point():
        return target == target  # False exactly at NaN
    if target.dtype == torch.bool:
        return torch.ones_like(target, dtype=torch.bool)
    return target >= 0


def _fill_missing(target: torch.Tensor) -> torch.Tensor:
    """``target`` with missing entries replaced by 0 (so the elementwise loss stays finite)."""
    if target.is_floating_point():
        return torch.nan_to_num(target, nan=0.0)
    if target.dtype == torch.bool:
        return target
    return target.clamp_min(0)


def _check_shapes(kind: str, logits: torch.Tensor, target: torch.Tensor) -> None:
    if kind == "multiclass":
        ok = logits.dim() == 2 and target.dim() == 1 and logits.shape[0] == target.shape[0]
        expected = "logits [B, K] and target [B] (int class ids)"
    elif kind == "binary":
        ok = logits.dim() == 1 and logits.shape == target.shape
        expected = "logits [B] and target [B]"
    elif kind == "multilabel":
        ok = logits.dim() == 2 and logits.shape == target.shape
        expected = "logits [B, K] and target [B, K]"
    else:
        ok = logits.shape == target.shape
        expected = "logits and target of the same shape ([B] or [B, K])"
    if not ok:
        hint = (
            " Squeeze the model's last dimension (logits[:, 0])."
            if logits.dim() == 2 and logits.shape[1] == 1
            else ""
        )
        raise ValueError(
            f"{kind} loss expects {expected}; got logits {tuple(logits.shape)} and target {tuple(target.shape)}.{hint}"
        )


def masked_loss_terms(
    kind: str, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over valid targets and the normaliser, as two 0-dim tensors (no device sync).

    ``loss = total / normaliser`` (with ``normaliser == 0`` meaning "no valid target", loss 0). Keeping the two apart
    lets a trainer accumulate an exact epoch mean without a per-batch ``.item()``.

    Parameters
    ----------
    kind : {"binary", "multiclass", "multilabel", "regression"}
    logits : Tensor
        Raw model outputs, shapes as in the module table. Computed in float32 if given in lower precision.
    target : Tensor
        Targets; NaN (float) or negative (int) entries are missing.
    weight : Tensor, optional
        ``pos_weight`` for binary ([1]) / multilabel ([K]); class weights ([K] or fewer: classes beyond its length
        weigh 1) for multiclass. Must be None for regression.

    Returns
    -------
    (total, normaliser) : tuple of 0-dim float tensors

    Raises
    ------
    ValueError
        On an unknown ``kind``, mismatched shapes, or a ``weight`` given for regression.
    TypeError
        If a regression target is not floating point.
    """
    check_head_kind(kind)
    _check_shapes(kind, logits, target)
    if kind == "regression" and not target.is_floating_point():
        raise TypeError(f"Regression targets must be floating point (NaN = missing); got {target.dtype}.")
    logits = logits.float()
    mask = target_mask(target)
    safe = _fill_missing(target)
    if kind == "multiclass":
        safe = safe.long()
        if weight is not None:
            n_classes = logits.shape[1]
            if weight.numel() < n_classes:
                weight = torch.cat([weight, weight.new_ones(n_classes - weight.numel())])
            per_sample_weight = weight.to(logits.dtype)[safe] * mask
        else:
            per_sample_weight = mask.to(logits.dtype)
        nll = F.cross_entropy(logits, safe, reduction="none")
        return (nll * per_sample_weight).sum(), per_sample_weight.sum()

    safe = safe.to(logits.dtype)
    maskf = mask.to(logits.dtype)
    if kind == "regression":
        if weight is not None:
            raise ValueError("Regression loss takes no class weight; pass weight=None (imbalance='none').")
        elementwise = (logits - safe) ** 2
    else:
        pos_weight = None if weight is None else weight.to(logits.dtype)
        elementwise = F.binary_cross_entropy_with_logits(
            logits, safe, pos_weight=pos_weight, reduction="none"
        )
    return (elementwise * maskf).sum(), maskf.sum()


def masked_loss(
    kind: str, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean loss over valid targets (0-dim tensor); 0 with zero gradient when no target is valid.

    Same parameters and raises as :func:`masked_loss_terms`.
    """
    total, normaliser = masked_loss_terms(kind, logits, target, weight)
    return mean_from_terms(total, normaliser)


def mean_from_terms(total: torch.Tensor, normaliser: torch.Tensor) -> torch.Tensor:
    """``total / normaliser``, and 0 (zero gradient, not NaN) when ``normaliser`` is 0 (then ``total`` is 0 too)."""
    return total / normaliser.clamp_min(1e-12)


class Objective(nn.Module):
    """The loss of one head kind as a module (the weight moves with ``.to(device)``).

    Parameters
    ----------
    kind : {"binary", "multiclass", "multilabel", "regression"}
    weight : array-like, optional
        As in :func:`masked_loss_terms` (e.g. from :func:`class_weights_from_labels`). Default None: unweighted.

    Raises
    ------
    ValueError
        On an unknown ``kind`` or a weight for regression.
    """

    def __init__(self, kind: str, weight: np.ndarray | torch.Tensor | None = None):
        super().__init__()
        self.kind = check_head_kind(kind)
        if weight is not None and kind == "regression":
            raise ValueError(
                "Regression loss takes no class weight; use imbalance='none' for regression heads."
            )
        w = None if weight is None else torch.as_tensor(np.asarray(weight, dtype=np.float32)).reshape(-1)
        self.register_buffer("weight", w)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(total, normaliser)``, see :func:`masked_loss_terms`."""
        return masked_loss_terms(self.kind, logits, target, self.weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over valid targets, see :func:`masked_loss`."""
        return masked_loss(self.kind, logits, target, self.weight)


def logits_to_output(kind: str, logits: torch.Tensor) -> torch.Tensor:
    """Probabilities (sigmoid for binary/multilabel, softmax over K for multiclass) or values (regression)."""
    check_head_kind(kind)
    logits = logits.float()
    if kind in ("binary", "multilabel"):
        return torch.sigmoid(logits)
    if kind == "multiclass":
        return torch.softmax(logits, dim=-1)
    return logits


def class_weights_from_labels(y: np.ndarray, kind: str, n_classes: int | None = None) -> np.ndarray:
    """Weights that balance classes, ignoring missing labels (NaN or negative).

    Parameters
    ----------
    y : ndarray
        [n] 0/1 labels (binary), [n] int classes (multiclass) or [n, K] 0/1 labels (multilabel).
    kind : {"binary", "multiclass", "multilabel"}
    n_classes : int, optional
        Multiclass only: length of the result (default ``max(y) + 1``).

    Returns
    -------
    ndarray of float32
        binary: ``[n_neg / n_pos]`` (shape [1], a ``pos_weight``); multilabel: per-label ``n_neg / n_pos`` ([K]);
        multiclass: ``n / (K_present * n_k)`` ([n_classes], as scikit-learn's "balanced"; a class with no sample
        gets 1.0).

    Raises
    ------
    ValueError
        For regression, if no label is present, or if a binary/multilabel column has no positive or no negative.
    """
    check_head_kind(kind)
    if kind == "regression":
        raise ValueError("Class weights need class labels; regression has none. Use imbalance='none'.")
    y = np.asarray(y, dtype=np.float64)
    valid = ~np.isnan(y) & (y >= 0)
    if kind == "multiclass":
        labels = y[valid].astype(np.int64)
        if labels.size == 0:
            raise ValueError("class_weights_from_labels got no valid multiclass label (all NaN / -1).")
        k = int(labels.max()) + 1 if n_classes is None else int(n_classes)
        counts = np.bincount(labels, minlength=k)[:k].astype(np.float64)
        present = counts > 0
        weights = np.ones(k)
        weights[present] = labels.size / (present.sum() * counts[present])
        return weights.astype(np.float32)
    if kind == "binary" and y.ndim != 1:
        raise ValueError(f"Binary labels must be 1-D [n]; got shape {y.shape}.")
    y2 = y.reshape(len(y), -1)
    valid2 = valid.reshape(len(y), -1)
    pos = ((y2 == 1) & valid2).sum(axis=0).astype(np.float64)
    neg = ((y2 == 0) & valid2).sum(axis=0).astype(np.float64)
    if np.any(pos == 0) or np.any(neg == 0):
        raise ValueError(
            f"class_weights_from_labels needs positives and negatives in every label; got positives {pos.tolist()} "
            f"and negatives {neg.tolist()}. Use imbalance='none' or a larger training set."
        )
    return (neg / pos).astype(np.float32)


def check_targets(y: np.ndarray, kind: str, name: str = "target") -> None:
    """Check that a target array fits ``kind`` (missing: NaN for floats, -1 for ints).

    binary: [n] in {0, 1}; multiclass: [n] integer class ids >= 0; multilabel: [n, K] in {0, 1};
    regression: [n] or [n, K] floats.

    Raises
    ------
    ValueError
        On a wrong shape, an unexpected label value (e.g. 2 in a binary target) or a non-integer class id.
    TypeError
        If ``y`` is not numeric, or a regression target is not floating point (ints have no NaN for missing).
    """
    check_head_kind(kind)
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise TypeError(
            f"{name} must be numeric for a {kind} head; got dtype {y.dtype}. Encode labels first."
        )
    want_dim = {"binary": (1,), "multiclass": (1,), "multilabel": (2,), "regression": (1, 2)}[kind]
    if y.ndim not in want_dim:
        raise ValueError(
            f"{name} for a {kind} head must be {' or '.join(f'{d}-D' for d in want_dim)}; got shape {y.shape}."
        )
    if kind == "regression":
        if not np.issubdtype(y.dtype, np.floating):
            raise TypeError(
                f"{name} for a regression head must be floating point (NaN = missing); got dtype {y.dtype}. "
                "Cast it with y.astype(np.float32)."
            )
        return
    yf = y.astype(np.float64)
    missing = np.isnan(yf) | (
        (yf == -1) if not np.issubdtype(y.dtype, np.floating) else np.zeros(y.shape, bool)
    )
    values = np.unique(yf[~missing])
    if kind == "multiclass":
        bad = values[(values < 0) | (values != np.round(values))]
        expected = "integer class ids >= 0 (missing: -1 for ints, NaN for floats)"
    else:
        bad = values[~np.isin(values, (0.0, 1.0))]
        expected = "0 or 1 (missing: NaN for floats, -1 for ints)"
    if bad.size:
        raise ValueError(
            f"{name} for a {kind} head must hold {expected}; got unexpected value(s) {bad[:5].tolist()}. "
            "Encode labels before training."
        )
