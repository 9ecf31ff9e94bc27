"""Fusion of per-modality feature vectors with missing-modality masking (absent modalities are never zero-faked).

Every fusion takes ``embeddings`` (modality -> ``[B, D_m]``) and ``present`` (modality -> ``[B]`` bool) and returns
``(fused [B, out_dim], weights [B, M] or None)``, modalities in the order given at construction. An absent
modality's embedding is ignored entirely (it may hold anything, even NaN): changing it does not change the output.

==============  =================================================================  ===============  ==========
kind            what it does                                                       out_dim          weights
==============  =================================================================  ===============  ==========
``concat``      absent -> learned "missing" embedding; concat all + presence flags   sum(D_m) + M     None
``gated``       projection to ``dim``; gate ``sigmoid(w_m . h_m)`` per modality,    dim              [B, M]
                absent gates set to 0, the rest renormalised to sum 1
``attention``   projection + modality embedding -> tokens; a learned query attends  dim              [B, M]
                over present tokens only (softmax); weights explain the fusion
==============  =================================================================  ===============  ==========

The FC layers after fusion (with dropout after each) belong to the model (see :class:`~.hybrid.HybridModel`).

Raises
------
ValueError
    In ``forward``, if a sample has no modality present (the positions are named): a prediction from nothing
    would be a guess, so the caller must drop those rows.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import nn

FusionKind = Literal["concat", "gated", "attention"]
FUSION_KINDS: tuple[str, ...] = get_args(FusionKind)


def presence_matrix(modalities: tuple[str, ...], present: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stack presence flags into ``[B, M]`` bool, checking every sample has at least one modality.

    Raises
    ------
    ValueError
        If a flag is missing or not bool, or a sample has no modality present (positions named).
    """
    flags = []
    for m in modalities:
        if m not in present:
            raise ValueError(f"Fusion got no presence flag for modality {m!r}.")
        if present[m].dtype != torch.bool or present[m].dim() != 1:
            raise ValueError(f"Presence flag of {m!r} must be [B] bool, got {tuple(present[m].shape)} {present[m].dtype}.")
        flags.append(present[m])
    matrix = torch.stack(flags, dim=1)
    empty = (~matrix.any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"Samples at batch positions {empty.tolist()[:20]} have none of the modalities {', '.join(modalities)}; "
            "drop them before prediction (a model cannot predict from no input)."
        )
    return matrix


class Fusion(nn.Module):
    """Base of the fusions: holds the modality order (``modalities``) and their widths (``dims``)."""

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        if not dims:
            raise ValueError("Fusion needs at least one modality.")
        self.modalities = tuple(dims)
        self.dims = dict(dims)

    def forward(self, embeddings, present) -> tuple[torch.Tensor, torch.Tensor | None]:
        matrix = presence_matrix(self.modalities, present)
        for m in self.modalities:
            h = embeddings[m]
            if h.dim() != 2 or h.shape[1] != self.dims[m]:
                raise ValueError(f"Embedding of {m!r} must be [B, {self.dims[m]}], got {tuple(h.shape)}.")
        return self.combine([embeddings[m] for m in self.modalities], matrix)

    def combine(self, embeddings: list[torch.Tensor], matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fusion itself, without input checks and without data-dependent branches (so it can be exported):
        ``embeddings`` in ``modalities`` order, ``matrix`` the ``[B, M]`` bool presence matrix (every row with at
        least one True; :meth:`forward` checks that)."""
        return self._combine(self._masked(embeddings, matrix), matrix)

    @staticmethod
    def _masked(embeddings: list[torch.Tensor], matrix: torch.Tensor) -> list[torch.Tensor]:
        """Embeddings with absent rows set to 0 (via where, so NaN in them cannot leak)."""
        return [torch.where(matrix[:, i : i + 1], h, torch.zeros_like(h)) for i, h in enumerate(embeddings)]

    def _combine(self, masked: list[torch.Tensor], matrix: torch.Tensor):
        raise NotImplementedError


class ConcatFusion(Fusion):
    """Concatenation with learned missing embeddings and presence indicators.

    Shapes: ``forward(embeddings, present) -> (fused [B, sum(D_m) + M], None)``.
    """

    def __init__(self, dims: dict[str, int]):
        super().__init__(dims)
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m, d in dims.items()})
        self.out_dim = sum(dims.values()) + len(dims)

    def _combine(self, masked, matrix) -> tuple[torch.Tensor, None]:
        parts = [
            torch.where(matrix[:, i : i + 1], h, self.missing[m].expand_as(h))
            for i, (m, h) in enumerate(zip(self.modalities, masked, strict=True))
        ]
        parts.append(matrix.to(parts[0].dtype))
        return torch.cat(parts, dim=1), None


class GatedFusion(Fusion):
    """Per-modality sigmoid gates, renormalised over present modalities, weighting projected embeddings.

    Shapes: ``forward(embeddings, present) -> (fused [B, dim], weights [B, M])``; weights sum to 1 per row and are 0
    for absent modalities.
    """

    def __init__(self, dims: dict[str, int], dim: int):
        super().__init__(dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in dims.items()})
        self.gate = nn.ModuleDict({m: nn.Linear(d, 1) for m, d in dims.items()})
        self.out_dim = dim

    def _combine(self, masked, matrix) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.cat([torch.sigmoid(self.gate[m](h)) for m, h in zip(self.modalities, masked, strict=True)], dim=1)
        gates = torch.where(matrix, gates, torch.zeros_like(gates))
        weights = gates / gates.sum(dim=1, keepdim=True).clamp_min(1e-12)
        values = torch.stack([self.proj[m](h) for m, h in zip(self.modalities, masked, strict=True)], dim=1)  # [B, M, dim]
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1), weights


class AttentionFusion(Fusion):
    """A learned query attends over modality tokens (projection + learned modality embedding), present ones only.

    Shapes: ``forward(embeddings, present) -> (fused [B, dim], weights [B, M])``; weights are the softmax attention
    (sum 1 per row, exactly 0 for absent modalities).
    """

    def __init__(self, dims: dict[str, int], dim: int):
        super().__init__(dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in dims.items()})
        self.modality_embedding = nn.Parameter(torch.randn(len(dims), dim) * 0.02)
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out_dim = dim

    def _combine(self, masked, matrix) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack([self.proj[m](h) for m, h in zip(self.modalities, masked, strict=True)], dim=1)
        tokens = tokens + self.modality_embedding  # [B, M, dim]
        scores = self.key(tokens) @ self.query / math.sqrt(self.out_dim)  # [B, M]
        weights = torch.softmax(scores.masked_fill(~matrix, float("-inf")), dim=1)
        return torch.bmm(weights.unsqueeze(1), self.value(tokens)).squeeze(1), weights


def build_fusion(kind: FusionKind, dims: dict[str, int], dim: int) -> Fusion:
    """Construct the fusion ``kind`` over modalities ``dims`` (name -> D_m); ``dim`` is used by gated/attention.

    Raises
    ------
    ValueError
        On an unknown kind or no modality.
    """
    if kind == "concat":
        return ConcatFusion(dims)
    if kind == "gated":
        return GatedFusion(dims, dim)
    if kind == "attention":
        return AttentionFusion(dims, dim)
    raise ValueError(f"Unknown fusion kind {kind!r}; expected one of {', '.join(FUSION_KINDS)}.")
