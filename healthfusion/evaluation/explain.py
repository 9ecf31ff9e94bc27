"""Attributions for time-series (and static) inputs of any batch-dict model, recurrent ones included.

SHAP's ``DeepExplainer`` fails its additivity check on LSTMs, so the methods here are gradient based and work on
any differentiable model: expected gradients (``"gradient_shap"``, Captum's GradientShap: SHAP values as the
expectation of ``(x - x') * grad f(x' + a (x - x'))`` over background samples ``x'`` and ``a ~ U(0, 1)``) and
Integrated Gradients (``"integrated_gradients"``, Captum, from the mean background input; its attributions sum to
``f(x) - f(baseline)``). Attributions are on the model's logit, one value per sample, time step and variable.

Only the attributed inputs (``ts_values`` and, with ``include_static=True``, ``static``) are perturbed; the rest
of the batch (masks, deltas, lengths, images, presence flags) is held at each sample's own values.

Example::

    model.eval()
    result = attribute_timeseries(model_forward(model), batch, background=bg_batch,
                                  variables=["HR", "MAP", "Lactate"], method="gradient_shap", n_samples=32)
    result.values.shape                # (n, T, V)
    result.global_importance().head()  # mean |attribution| per variable, descending
    result.top_features(3)             # each patient's 3 strongest contributors, signed
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from healthfusion.features import batch as B

METHODS: tuple[str, ...] = ("gradient_shap", "integrated_gradients")

Forward = Callable[[dict[str, torch.Tensor]], Any]


def model_forward(model: torch.nn.Module) -> Forward:
    """A forward callable ``batch -> logits [B]`` for a model returning a tensor or a dict with ``"logits"``."""

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _logits(model(batch))

    return forward


def _logits(out: Any) -> torch.Tensor:
    logits = out["logits"] if isinstance(out, Mapping) else out
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"The forward callable must return a tensor or a dict with 'logits'; got {type(out).__name__}.")
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.dim() != 1:
        raise ValueError(
            f"Attributions need one logit per sample ([B] or [B, 1]); got {tuple(logits.shape)}. For a multi-output "
            "head, wrap the forward to select one output column."
        )
    return logits


@dataclass
class Attribution:
    """Attributions of one model's logit to its time-series (and static) inputs.

    Attributes
    ----------
    values : ndarray [n, T, V]
        Per sample, time step and variable (logit units).
    variables : list of str
        The V variable names.
    static_values : ndarray [n, F] or None
        Attributions of the static features, when they were attributed.
    static_names : list of str
        The F static feature names (empty when static was not attributed).
    method : str
    sample_ids : list, optional
        Names of the n samples (default: 0..n-1), used as the index of per-patient tables.
    expected_value : float
        The model's mean logit over the reference inputs (background for gradient_shap, the baseline for IG).
    step_hours : float, optional
        Hours per time step, used by :meth:`per_window`.
    """

    values: np.ndarray
    variables: list[str]
    method: str
    static_values: np.ndarray | None = None
    static_names: list[str] = field(default_factory=list)
    sample_ids: list | None = None
    expected_value: float = float("nan")
    step_hours: float = 1.0

    def __post_init__(self) -> None:
        if self.sample_ids is None:
            self.sample_ids = list(range(self.values.shape[0]))

    @property
    def feature_names(self) -> list[str]:
        """Variables then static features: the columns of :meth:`per_variable`."""
        return [*self.variables, *self.static_names]

    def per_variable(self) -> pd.DataFrame:
        """[n x (V + F)] signed attribution per sample and variable, summed over time (static features appended)."""
        parts = [self.values.sum(axis=1)]
        if self.static_values is not None:
            parts.append(self.static_values)
        return pd.DataFrame(np.concatenate(parts, axis=1), index=pd.Index(self.sample_ids, name="sample"),
                            columns=self.feature_names)

    def per_window(self, hours: float) -> pd.DataFrame:
        """Signed attribution summed over windows of ``hours``: a frame indexed by window start (hours), one column
        per variable, averaged over samples of their absolute values (a global "when and what" table)."""
        if hours <= 0:
            raise ValueError(f"hours must be > 0, got {hours}.")
        steps = max(1, int(round(hours / self.step_hours)))
        n, t, v = self.values.shape
        starts = range(0, t, steps)
        rows = [np.abs(self.values[:, s:s + steps, :].sum(axis=1)).mean(axis=0) for s in starts]
        return pd.DataFrame(rows, index=pd.Index([s * self.step_hours for s in starts], name="hour"),
                            columns=self.variables)

    def global_importance(self) -> pd.Series:
        """Mean absolute per-sample attribution of each variable (and static feature), sorted descending."""
        return self.per_variable().abs().mean(axis=0).sort_values(ascending=False).rename("mean_abs_attribution")

    def top_features(self, k: int = 5) -> pd.DataFrame:
        """Each sample's ``k`` largest contributors by absolute value: columns sample, rank, feature, attribution,
        direction ("raises risk" / "lowers risk")."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        table = self.per_variable()
        values = table.to_numpy()
        order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
        rows = []
        for i, sample in enumerate(table.index):
            for rank, j in enumerate(order[i], start=1):
                a = float(values[i, j])
                rows.append({"sample": sample, "rank": rank, "feature": table.columns[j], "attribution": a,
                             "direction": "raises risk" if a > 0 else "lowers risk"})
        return pd.DataFrame(rows)


def _to_batch(batch: Any) -> dict[str, torch.Tensor]:
    if hasattr(batch, "batch") and callable(batch.batch):  # an ArrayDataset
        batch = batch.batch()
    if not isinstance(batch, Mapping):
        raise TypeError(f"Expected a batch dict of tensors (or an ArrayDataset); got {type(batch).__name__}.")
    out = {}
    for key, value in batch.items():
        if key == B.TARGET:
            continue
        out[key] = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    return out


def _check(batch: dict, background: dict, variables: Sequence[str], include_static: bool, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown attribution method {method!r}; expected one of {', '.join(METHODS)}.")
    keys = [B.TS_VALUES, *([B.STATIC] if include_static else [])]
    for name, part in (("batch", batch), ("background", background)):
        for key in keys:
            if key not in part:
                raise ValueError(f"The {name} has no {key!r} (keys: {', '.join(sorted(part))}); nothing to attribute.")
    ts = batch[B.TS_VALUES]
    if ts.dim() != 3:
        raise ValueError(f"{B.TS_VALUES} must be [B, T, V]; got {tuple(ts.shape)}.")
    if len(variables) != ts.shape[2]:
        raise ValueError(f"variables has {len(variables)} names but {B.TS_VALUES} has V = {ts.shape[2]} variables.")
    for key in keys:
        if background[key].shape[1:] != batch[key].shape[1:]:
            raise ValueError(f"background {key!r} is {tuple(background[key].shape)} but the batch's is "
                             f"{tuple(batch[key].shape)}; they must agree beyond the sample axis.")
    if background[B.TS_VALUES].shape[0] == 0:
        raise ValueError("The background has no samples; pass a few dozen training samples.")


def attribute_timeseries(
    forward: Forward,
    batch: Any,
    *,
    background: Any,
    variables: Sequence[str],
    method: str = "gradient_shap",
    n_samples: int = 32,
    include_static: bool = False,
    static_names: Sequence[str] | None = None,
    chunk_size: int = 16,
    seed: int = 0,
    sample_ids: Sequence | None = None,
    step_hours: float = 1.0,
) -> Attribution:
    """Attribute the logit of ``forward`` on each sample of ``batch`` to its time-series values (and static).

    Parameters
    ----------
    forward : callable
        ``batch dict -> logits`` of shape [B] or [B, 1] (or a dict with ``"logits"``); put the model in eval mode.
        :func:`model_forward` wraps a model.
    batch, background : dict of tensors or ArrayDataset
        Samples to explain ([n, T, V] ``ts_values`` ...) and reference samples (a few dozen training samples).
    variables : sequence of str
        The V time-series variable names.
    method : "gradient_shap" | "integrated_gradients", default "gradient_shap"
    n_samples : int, default 32
        Random background draws per sample (gradient_shap) or integration steps (integrated_gradients).
    include_static : bool, default False
        Also attribute ``static`` [n, F]; ``static_names`` (default ``static_0`` ...) name its columns.
    chunk_size : int, default 16
        Samples attributed at once (memory grows with ``chunk_size * n_samples``).
    seed : int
        Seeds the background draws of gradient_shap.

    Returns
    -------
    Attribution

    Raises
    ------
    ValueError
        Unknown method, a missing key, a variables/V mismatch, shapes that disagree, an empty background, or a
        forward that does not return one logit per sample.
    """
    from captum.attr import GradientShap, IntegratedGradients

    x, bg = _to_batch(batch), _to_batch(background)
    _check(x, bg, variables, include_static, method)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
    keys = [B.TS_VALUES, *([B.STATIC] if include_static else [])]
    others = [k for k in x if k not in keys]

    def wrapped(*args: torch.Tensor) -> torch.Tensor:
        inputs, rest = args[: len(keys)], args[len(keys):]
        return _logits(forward({**dict(zip(keys, inputs, strict=True)), **dict(zip(others, rest, strict=True))}))

    bg_inputs = tuple(bg[k].float() for k in keys)
    with torch.no_grad():
        if method == "gradient_shap":
            expected = float(_logits(forward({k: v for k, v in bg.items()})).mean())
            baselines: tuple[torch.Tensor, ...] = bg_inputs
        else:
            baselines = tuple(b.mean(dim=0, keepdim=True) for b in bg_inputs)
            expected = float("nan")  # the baseline's logit depends on each sample's other inputs
    explainer = GradientShap(wrapped) if method == "gradient_shap" else IntegratedGradients(wrapped)
    n = x[B.TS_VALUES].shape[0]
    torch.manual_seed(seed)
    parts: list[list[np.ndarray]] = [[] for _ in keys]
    numpy_state = np.random.get_state()  # GradientShap draws baselines and alphas from numpy's global generator
    np.random.seed(seed)
    try:
        for start in range(0, n, chunk_size):
            sl = slice(start, start + chunk_size)
            inputs = tuple(x[k][sl].float().clone().requires_grad_(True) for k in keys)
            extra = tuple(x[k][sl] for k in others)
            if method == "gradient_shap":
                attr = explainer.attribute(inputs, baselines=baselines, n_samples=n_samples, stdevs=0.0,
                                           additional_forward_args=extra or None)
            else:
                attr = explainer.attribute(inputs, baselines=baselines, n_steps=n_samples, method="gausslegendre",
                                           additional_forward_args=extra or None, internal_batch_size=None)
            attr = attr if isinstance(attr, tuple) else (attr,)
            for i, a in enumerate(attr):
                parts[i].append(a.detach().cpu().numpy())
    finally:
        np.random.set_state(numpy_state)
    values = np.concatenate(parts[0], axis=0)
    static_values = np.concatenate(parts[1], axis=0) if include_static else None
    names = list(static_names) if static_names is not None else (
        [f"static_{j}" for j in range(static_values.shape[1])] if static_values is not None else [])
    if static_values is not None and len(names) != static_values.shape[1]:
        raise ValueError(f"static_names has {len(names)} names but static has {static_values.shape[1]} columns.")
    return Attribution(values=values, variables=list(variables), method=method, static_values=static_values,
                       static_names=names, sample_ids=list(sample_ids) if sample_ids is not None else None,
                       expected_value=expected, step_hours=step_hours)
