"""Multimodal multitask model (M3H): shared modality encoders, one representation per task, cross-task attention,
and one head per task of any kind (binary, multiclass, multilabel, regression, clustering).

Architecture
------------
1. **Shared encoders.** One encoder per configured modality (the encoders of :class:`~.hybrid.HybridModel`, which
   this model holds as its ``backbone`` and of which it only uses :meth:`~.hybrid.HybridModel.encode` and
   :meth:`~.hybrid.HybridModel.presence`). Every task reads the same encoder outputs.
2. **Task towers.** Task ``i`` fuses the modalities it declares (a missing-aware fusion of
   :mod:`healthfusion.models.fusion`) and maps the result to its representation ``r_i`` (``[B, task_dim]``).
3. **Task attention** (:class:`TaskAttention`). Task ``i``'s query attends over the *other* tasks' representations:
   ``alpha_ij = softmax_j!=i(q_i . k_j / sqrt(d))`` and ``c_i = sum_j alpha_ij v_j`` (cross-exploration). A learned
   gate ``beta_i = sigmoid(w_i . [r_i, c_i] + b_i)`` balances it against the task's own representation
   (self-exploitation): ``h_i = beta_i r_i + (1 - beta_i) c_i``. ``beta`` and ``alpha`` are returned with every
   forward pass, so the balance is reported, not hidden.
4. **Heads.** :class:`~.heads.Head` for the supervised kinds; :class:`ClusteringHead` (a DEC-style Student-t soft
   assignment to learned centroids) for clustering, which learns phenotypes without labels.

Rows where none of a task's modalities is present get ``task_present = False`` for that task: its output there is
meaningless and the training loss masks it.

Example::

    config = MultitaskModelConfig(
        static=MLPEncoderConfig(in_dim=20),
        tasks=(TaskSpec(name="death", kind="binary"), TaskSpec(name="pheno", kind="clustering", n_outputs=4)),
    )
    model = MultitaskModel(config)
    out = model(batch)
    out["logits"]["death"].shape        # [B]
    out["task_attention"].shape         # [B, 2, 2]
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from pydantic import Field, model_validator
from torch import nn

from healthfusion.features import batch as B
from healthfusion.models.base import ModelConfig, PretrainedModel, register_model
from healthfusion.models.encoders import (
    CNNEncoderConfig,
    CodesEncoderConfig,
    MLPEncoderConfig,
    TextEncoderConfig,
)
from healthfusion.models.encoders.transformer import TimeSeriesEncoderConfig
from healthfusion.models.fusion import FusionKind, build_fusion
from healthfusion.models.heads import Head, check_head
from healthfusion.models.hybrid import HybridConfig, HybridModel

TaskKind = Literal["binary", "multiclass", "multilabel", "regression", "clustering"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)


class TaskSpec(ModelConfig):
    """One task of a :class:`MultitaskModel`.

    Attributes
    ----------
    name : str
        Unique task name (letters, digits, ``_`` and ``-``).
    kind : "binary" | "multiclass" | "multilabel" | "regression" | "clustering"
    n_outputs : int, default 1
        Classes (multiclass), labels (multilabel) or clusters (clustering); 1 for binary and regression.
    modalities : tuple of str, optional
        Modalities the task reads; empty (default) means every modality of the model.
    target_shift, target_scale : float, default 0 and 1
        Regression only: the head predicts ``(y - shift) / scale``; :meth:`MultitaskModel.predictions` undoes it.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: TaskKind
    n_outputs: int = Field(default=1, ge=1)
    modalities: tuple[Literal["ts", "static", "codes", "text", "image"], ...] = ()
    target_shift: float = 0.0
    target_scale: float = Field(default=1.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.kind == "clustering":
            if self.n_outputs < 2:
                raise ValueError(f"Task {self.name!r}: a clustering task needs n_outputs >= 2 clusters.")
        else:
            check_head(self.kind, self.n_outputs)
        return self


class MultitaskModelConfig(ModelConfig):
    """Config of :class:`MultitaskModel`; the encoder fields are those of :class:`~.hybrid.HybridConfig`.

    Attributes
    ----------
    ts, static, codes, text, image : encoder configs, optional
        A modality is used when its encoder config is set.
    tasks : tuple of TaskSpec
        At least one; names unique; each task's modalities must be configured.
    fusion : "concat" | "gated" | "attention", default "concat"
        Per-task fusion of the task's modalities.
    fusion_dim : int, default 32
    task_dim : int, default 32
        Width of each task representation (and of the attention).
    dropout : float, default 0.1
    task_attention : bool, default True
        False: no cross-task attention (``h_i = r_i``); used for single-task models and as an ablation.
    cluster_alpha : float, default 1.0
        Degrees of freedom of the clustering heads' Student-t kernel.
    gate_init : float, default 0.0
        Initial bias of every task's self/cross gate: ``beta`` starts near ``sigmoid(gate_init)`` (0: an even mix;
        positive: each task starts from its own representation and learns how much to take from the others).
    cluster_gradient : bool, default True
        Whether the clustering tasks' loss reaches the shared encoders (False: the clusters are learned on the shared
        embedding without reshaping it; their tower, attention and head still learn).

    Raises
    ------
    pydantic.ValidationError
        No modality, no task, duplicate task names, a task naming an unconfigured modality, unknown keys.
    """

    ts: TimeSeriesEncoderConfig | None = None
    static: MLPEncoderConfig | None = None
    codes: CodesEncoderConfig | None = None
    text: TextEncoderConfig | None = None
    image: CNNEncoderConfig | None = None
    tasks: tuple[TaskSpec, ...] = Field(min_length=1)
    fusion: FusionKind = "concat"
    fusion_dim: int = Field(default=32, ge=1)
    task_dim: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    task_attention: bool = True
    cluster_alpha: float = Field(default=1.0, gt=0.0)
    gate_init: float = 0.0
    cluster_gradient: bool = True

    @model_validator(mode="after")
    def _check(self) -> MultitaskModelConfig:
        if not self.modalities:
            raise ValueError(f"MultitaskModelConfig needs at least one modality config among {', '.join(B.MODALITIES)}.")
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"Task names must be unique; {dup} repeat.")
        for t in self.tasks:
            unknown = [m for m in t.modalities if m not in self.modalities]
            if unknown:
                raise ValueError(f"Task {t.name!r} reads modality {unknown} that the model does not configure "
                                 f"(configured: {list(self.modalities)}).")
        return self

    @property
    def modalities(self) -> tuple[str, ...]:
        """Configured modalities in :data:`healthfusion.features.batch.MODALITIES` order."""
        return tuple(m for m in B.MODALITIES if getattr(self, m) is not None)

    def task_modalities(self, task: TaskSpec) -> tuple[str, ...]:
        """Modalities task ``task`` reads (all configured ones when it declares none), in model order."""
        wanted = set(task.modalities) or set(self.modalities)
        return tuple(m for m in self.modalities if m in wanted)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)


class ClusteringHead(nn.Module):
    """DEC-style soft assignment of embeddings to ``n_clusters`` learned centroids (Student-t kernel).

    ``q_ik ∝ (1 + |h_i - mu_k|^2 / alpha)^(-(alpha + 1) / 2)``, normalised over k.

    Shapes
    ------
    forward(embedding [B, D]) -> log q [B, K] (log-probabilities; ``exp`` sums to 1 per row)
    """

    def __init__(self, in_dim: int, n_clusters: int, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)
        self.centroids = nn.Parameter(torch.randn(n_clusters, in_dim) * 0.1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        dist2 = torch.cdist(embedding, self.centroids).pow(2)
        log_kernel = -(self.alpha + 1.0) / 2.0 * torch.log1p(dist2 / self.alpha)
        return torch.log_softmax(log_kernel, dim=1)


class TaskAttention(nn.Module):
    """Each task's query attends over the other tasks' representations; a learned gate balances the result
    (cross-exploration) against the task's own representation (self-exploitation).

    Parameters
    ----------
    n_tasks : int
    dim : int
        Width D of every task representation.

    Shapes
    ------
    forward(reps [B, T, D], present [B, T] bool, removed [T] bool or None)
        -> (h [B, T, D], attention [B, T, T], self_weight [B, T])

    ``attention[b, i, j]`` is task i's weight on task j (0 on the diagonal, on tasks absent for that row and on
    ``removed`` tasks; rows sum to 1 where some other task is available, else 0). ``self_weight`` is ``beta``;
    where no other task is available, ``beta = 1`` and ``h_i = r_i``.
    """

    def __init__(self, n_tasks: int, dim: int, gate_init: float = 0.0):
        super().__init__()
        self.dim = dim
        self.task_embedding = nn.Parameter(torch.randn(n_tasks, dim) * 0.02)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.gate_weight = nn.Parameter(torch.zeros(n_tasks, 2 * dim))
        self.gate_bias = nn.Parameter(torch.full((n_tasks,), float(gate_init)))

    def _cross(self, tokens: torch.Tensor, sources: torch.Tensor, allowed: torch.Tensor):
        scores = self.query(tokens) @ self.key(sources).transpose(1, 2) / math.sqrt(self.dim)  # [B, T, T]
        attention = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=2)
        attention = torch.where(allowed, attention, torch.zeros_like(attention))  # rows with no other task: 0, not NaN
        return attention, attention @ self.value(sources)  # [B, T, T], [B, T, D]

    def forward(self, reps: torch.Tensor, present: torch.Tensor, removed: torch.Tensor | None = None,
                detached: torch.Tensor | None = None):
        """``detached`` ([T] bool, optional): tasks whose query reads the other tasks' representations without
        passing gradient back into them."""
        batch, n_tasks, _ = reps.shape
        tokens = reps + self.task_embedding
        allowed = present[:, None, :] & ~torch.eye(n_tasks, dtype=torch.bool, device=reps.device)[None]
        if removed is not None:
            allowed = allowed & ~removed[None, None, :]
        any_other = allowed.any(dim=2)  # [B, T]
        attention, cross = self._cross(tokens, tokens, allowed)
        if detached is not None and bool(detached.any()):
            att_d, cross_d = self._cross(tokens, reps.detach() + self.task_embedding, allowed)
            attention = torch.where(detached[None, :, None], att_d, attention)
            cross = torch.where(detached[None, :, None], cross_d, cross)
        gate_in = torch.cat([reps, cross], dim=2)
        beta = torch.sigmoid((gate_in * self.gate_weight).sum(dim=2) + self.gate_bias)
        beta = torch.where(any_other, beta, torch.ones_like(beta))
        h = beta.unsqueeze(2) * reps + (1.0 - beta).unsqueeze(2) * cross
        return h, attention, beta


@register_model("multitask")
class MultitaskModel(PretrainedModel):
    """Multimodal multitask model; registered as ``"multitask"`` (see the module docstring).

    Shapes
    ------
    forward(batch, removed=None) -> dict with
        ``logits``          {task: [B] (binary, regression) or [B, K] (multiclass, multilabel, clustering: log q)}
        ``representations`` [B, T, task_dim] task representations after the task attention (``h``)
        ``task_attention``  [B, T, T] (zeros without task attention)
        ``self_weight``     [B, T] the gate ``beta`` (ones without task attention)
        ``task_present``    [B, T] bool: the task has at least one of its modalities for the row

    ``removed`` ([T] bool, optional) hides tasks from every other task's attention (the attention ablation).

    Raises
    ------
    ValueError
        In ``forward``: a configured modality's input is missing from the batch, or as the encoders raise.
    """

    config_class = MultitaskModelConfig
    config: MultitaskModelConfig

    def __init__(self, config: MultitaskModelConfig):
        super().__init__(config)
        encoders = {m: getattr(config, m) for m in config.modalities}
        self.backbone = HybridModel(HybridConfig(**encoders, fusion="concat", fc_hidden=(), head="regression"))
        dims = {m: self.backbone.encoders[m].out_dim for m in config.modalities}
        self.task_names = config.task_names
        self.fusions = nn.ModuleDict()
        self.towers = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for task in config.tasks:
            mods = config.task_modalities(task)
            fusion = build_fusion(config.fusion, {m: dims[m] for m in mods}, config.fusion_dim)
            self.fusions[task.name] = fusion
            self.towers[task.name] = nn.Sequential(nn.Linear(fusion.out_dim, config.task_dim), nn.ReLU(),
                                                   nn.Dropout(config.dropout))
            if task.kind == "clustering":
                self.heads[task.name] = ClusteringHead(config.task_dim, task.n_outputs, config.cluster_alpha)
            else:
                self.heads[task.name] = Head(config.task_dim, task.kind, task.n_outputs)
        self.attention = (TaskAttention(len(config.tasks), config.task_dim, config.gate_init)
                          if config.task_attention else None)
        detached = [t.kind == "clustering" and not config.cluster_gradient for t in config.tasks]
        self.register_buffer("_detached", torch.tensor(detached) if any(detached) else None, persistent=False)

    def task(self, name: str) -> TaskSpec:
        """The :class:`TaskSpec` named ``name``.

        Raises
        ------
        KeyError
            Naming the known tasks.
        """
        for t in self.config.tasks:
            if t.name == name:
                return t
        raise KeyError(f"No task {name!r}; the model has tasks {list(self.task_names)}.")

    def _task_reps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.backbone.encode(batch)
        present = self.backbone.presence(batch)
        reps, flags = [], []
        for task in self.config.tasks:
            mods = self.config.task_modalities(task)
            any_present = torch.stack([present[m] for m in mods], dim=1).any(dim=1)
            # rows without any of the task's modalities: feed the first one as present (its embedding is 0 there);
            # the output is flagged absent and never used in a loss or a metric
            first = mods[0]
            task_present = {m: present[m] | (~any_present if m == first else torch.zeros_like(any_present))
                            for m in mods}
            inputs = {m: embeddings[m] for m in mods}
            if task.kind == "clustering" and not self.config.cluster_gradient:
                inputs = {m: h.detach() for m, h in inputs.items()}
            fused, _ = self.fusions[task.name](inputs, task_present)
            reps.append(self.towers[task.name](fused))
            flags.append(any_present)
        return torch.stack(reps, dim=1), torch.stack(flags, dim=1)

    def forward(self, batch: dict[str, torch.Tensor], removed: torch.Tensor | None = None) -> dict[str, Any]:
        reps, present = self._task_reps(batch)
        if self.attention is not None:
            h, attention, beta = self.attention(reps, present, removed, self._detached)
        else:
            n, t = present.shape
            h = reps
            attention = reps.new_zeros(n, t, t)
            beta = reps.new_ones(n, t)
        logits = {task.name: self.heads[task.name](h[:, i]) for i, task in enumerate(self.config.tasks)}
        return {"logits": logits, "representations": h, "task_attention": attention, "self_weight": beta,
                "task_present": present}

    def predictions(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per task: probabilities (binary/multilabel sigmoid, multiclass softmax, clustering soft assignment) or
        values on the original scale (regression: ``logit * scale + shift``)."""
        out = {}
        for task in self.config.tasks:
            z = logits[task.name].float()
            if task.kind in ("binary", "multilabel"):
                out[task.name] = torch.sigmoid(z)
            elif task.kind == "multiclass":
                out[task.name] = torch.softmax(z, dim=-1)
            elif task.kind == "clustering":
                out[task.name] = z.exp()
            else:
                out[task.name] = z * task.target_scale + task.target_shift
        return out
