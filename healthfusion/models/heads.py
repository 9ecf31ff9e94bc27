"""Prediction heads: a linear layer from the fused embedding to the task's outputs.

==============  ==============  ============================  ==========================================
head_kind       n_outputs       logits shape                  :func:`head_predictions`
==============  ==============  ============================  ==========================================
``binary``      1               [B]                           sigmoid -> P(y = 1)
``multiclass``  K >= 2          [B, K]                        softmax over K classes
``multilabel``  K >= 1          [B, K]                        sigmoid per label
``regression``  1               [B]                           identity
==============  ==============  ============================  ==========================================

Example::

    head = Head(16, "multiclass", 3)
    head(torch.zeros(4, 16)).shape  # torch.Size([4, 3])
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

HeadKind = Literal["binary", "multiclass", "multilabel", "regression"]
HEAD_KINDS: tuple[str, ...] = get_args(HeadKind)


def check_head(kind: str, n_outputs: int) -> None:
    """Raise ValueError unless ``(kind, n_outputs)`` is a valid pair (see the module table)."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"Unknown head kind {kind!r}; expected one of {', '.join(HEAD_KINDS)}.")
    if kind in ("binary", "regression") and n_outputs != 1:
        raise ValueError(f"A {kind} head has n_outputs=1, got {n_outputs}.")
    if kind == "multiclass" and n_outputs < 2:
        raise ValueError(f"A multiclass head needs n_outputs >= 2 classes, got {n_outputs}; use 'binary' for two.")
    if kind == "multilabel" and n_outputs < 1:
        raise ValueError(f"A multilabel head needs n_outputs >= 1 labels, got {n_outputs}.")


class Head(nn.Module):
    """Linear head.

    Parameters
    ----------
    in_dim : int
        Width D of the input embedding.
    kind : {"binary", "multiclass", "multilabel", "regression"}
    n_outputs : int, default 1
        K classes or labels; must be 1 for binary and regression.

    Shapes
    ------
    forward(embedding [B, D]) -> logits [B] (binary, regression) or [B, K] (multiclass, multilabel)

    Raises
    ------
    ValueError
        On an unknown kind or a kind/``n_outputs`` mismatch.
    """

    def __init__(self, in_dim: int, kind: HeadKind, n_outputs: int = 1):
        super().__init__()
        check_head(kind, n_outputs)
        self.kind = kind
        self.n_outputs = n_outputs
        self.linear = nn.Linear(in_dim, n_outputs)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        out = self.linear(embedding)
        return out.squeeze(-1) if self.kind in ("binary", "regression") else out


def head_predictions(logits: torch.Tensor, kind: HeadKind) -> torch.Tensor:
    """Turn a head's logits into predictions: probabilities for classification, values for regression.

    Shapes are kept (``[B]`` or ``[B, K]``).

    Raises
    ------
    ValueError
        On an unknown kind.
    """
    if kind in ("binary", "multilabel"):
        return torch.sigmoid(logits)
    if kind == "multiclass":
        return torch.softmax(logits, dim=-1)
    if kind == "regression":
        return logits
    raise ValueError(f"Unknown head kind {kind!r}; expected one of {', '.join(HEAD_KINDS)}.")
