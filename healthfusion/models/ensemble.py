"""Weighted ensembles of binary risk models, with weights fitted on validation predictions only.

An ensemble is a spec (:class:`EnsembleWeights`): member names, convex weights (non-negative, summing to 1) and how
the members' probabilities are combined:

=============  =========================================================================================
combine        ensemble probability
=============  =========================================================================================
``logit``      ``sigmoid(sum_m w_m * logit(p_m))``: a weighted geometric mean of the odds (the default;
               members on different probability scales mix better on the log-odds scale)
``probability``  ``sum_m w_m * p_m``: a weighted mean of the probabilities
=============  =========================================================================================

:func:`fit_weights` chooses the weights by one of two methods (``method``):

* ``"grid"`` (the default): a grid over the simplex (step 0.05 by default), scored by the validation log-loss (or
  AUROC) of the combined probabilities. The combination has no intercept or scale of its own, so a member whose
  probabilities are shifted or over/under-confident costs log-loss however well it ranks the stays, and the weights
  can collapse onto the best-calibrated member although another adds information.
* ``"stacking"``: a logistic regression of the outcome on the members' log-odds (``combine="logit"``; their
  probabilities with ``"probability"``), with an intercept and non-negative coefficients; the weights are the
  coefficients divided by their sum. The intercept and the coefficients' overall size absorb the members'
  calibration, so the weights reflect what each member adds to the ranking; the ensemble's own calibration is left
  to the calibrator fitted after it (``evaluation.calibration`` in a run).
 Fit them on predictions for stays none of the members was trained on (a validation split), never on the
test set: weights chosen on test data make the ensemble's test score optimistic.

Example
-------
>>> import numpy as np
>>> y = np.array([0, 0, 1, 1, 0, 1])
>>> val = {"good": np.array([.1, .2, .8, .9, .3, .7]), "noisy": np.array([.6, .2, .4, .9, .5, .3])}
>>> spec = fit_weights(val, y)
>>> spec.weight("good") > spec.weight("noisy")
True
>>> combine({"good": np.array([.5]), "noisy": np.array([.5])}, spec).round(3)
array([0.5])
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

ENSEMBLE_FORMAT = "healthfusion.ensemble"
ENSEMBLE_FORMAT_VERSION = 1
COMBINE_METHODS: tuple[str, ...] = ("logit", "probability")
CRITERIA: tuple[str, ...] = ("log_loss", "auroc")
FIT_METHODS: tuple[str, ...] = ("grid", "stacking")
MAX_GRID_POINTS = 200_000
_EPS = 1e-7


@dataclass(frozen=True)
class EnsembleWeights:
    """An ensemble spec: member names, convex weights and the combination rule.

    Attributes
    ----------
    members : tuple of str
        Member names, in order (distinct).
    weights : tuple of float
        One per member, each >= 0, summing to 1.
    combine : "logit" or "probability"
        See the module table.
    fit_info : dict
        How the weights were chosen (criterion, grid step, validation size, scores); informational.

    Raises
    ------
    ValueError
        On construction: duplicated or no members, a weight count that differs from the member count, a negative
        weight, weights that do not sum to 1, or an unknown ``combine``.
    """

    members: tuple[str, ...]
    weights: tuple[float, ...]
    combine: str = "logit"
    fit_info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        members = tuple(str(m) for m in self.members)
        weights = tuple(float(w) for w in self.weights)
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "weights", weights)
        if not members:
            raise ValueError("An ensemble needs at least one member.")
        if len(set(members)) != len(members):
            raise ValueError(f"Ensemble member names must be distinct, got {list(members)}.")
        if len(weights) != len(members):
            raise ValueError(f"Expected one weight per member ({len(members)}), got {len(weights)}.")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"Ensemble weights must be finite and >= 0, got {list(weights)}.")
        if abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"Ensemble weights must sum to 1, got {list(weights)} (sum {sum(weights)}); "
                             "use EnsembleWeights.uniform or divide by their sum.")
        if self.combine not in COMBINE_METHODS:
            raise ValueError(f"Unknown combine {self.combine!r}; expected one of {', '.join(COMBINE_METHODS)}.")

    @classmethod
    def uniform(cls, members: Sequence[str], combine: str = "logit") -> EnsembleWeights:
        """Equal weights over ``members``."""
        members = tuple(members)
        return cls(members, tuple(1.0 / len(members) for _ in members) if members else (), combine)

    def weight(self, member: str) -> float:
        """The weight of ``member``. Raises ValueError for an unknown name."""
        if member not in self.members:
            raise ValueError(f"{member!r} is not an ensemble member; members are {list(self.members)}.")
        return self.weights[self.members.index(member)]

    # --------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (with format name and version)."""
        return {
            "format": ENSEMBLE_FORMAT,
            "format_version": ENSEMBLE_FORMAT_VERSION,
            "members": list(self.members),
            "weights": list(self.weights),
            "combine": self.combine,
            "fit_info": self.fit_info,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> EnsembleWeights:
        """Inverse of :meth:`to_dict`. Raises ValueError on another format or version, or invalid content."""
        if state.get("format") != ENSEMBLE_FORMAT or state.get("format_version") != ENSEMBLE_FORMAT_VERSION:
            raise ValueError(
                f"Not an ensemble spec of this healthfusion: format {state.get('format')!r} version "
                f"{state.get('format_version')!r}, expected {ENSEMBLE_FORMAT!r} version {ENSEMBLE_FORMAT_VERSION}."
            )
        missing = [k for k in ("members", "weights", "combine") if k not in state]
        if missing:
            raise ValueError(f"Ensemble spec lacks {missing}; it has {sorted(state)}.")
        return cls(tuple(state["members"]), tuple(state["weights"]), state["combine"], dict(state.get("fit_info", {})))

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON to ``path`` (a ``.json`` file; parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> EnsembleWeights:
        """Read a spec written by :meth:`save`. Raises ValueError on a malformed file."""
        path = Path(path)
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}).") from err
        return cls.from_dict(state)


def _member_arrays(probabilities: Mapping[str, Any], members: Sequence[str]) -> np.ndarray:
    """Stack members' probabilities into ``[M, n]``, checking names, shapes and ranges."""
    if not isinstance(probabilities, Mapping):
        raise ValueError(f"Expected a dict {{member: probabilities [n]}}, got {type(probabilities).__name__}.")
    missing = [m for m in members if m not in probabilities]
    extra = [m for m in probabilities if m not in set(members)]
    if missing or extra:
        raise ValueError(f"Probabilities must be given for exactly the members {list(members)}: "
                         f"missing {missing}, extra {extra}.")
    rows = []
    for m in members:
        p = np.asarray(probabilities[m], dtype=np.float64)
        if p.ndim == 2 and p.shape[1] == 2:
            raise ValueError(f"Member {m!r}: expected positive-class probabilities [n], got [n, 2]; "
                             "pass predict_proba(X)[:, 1].")
        if p.ndim != 1:
            raise ValueError(f"Member {m!r}: expected probabilities of shape [n], got {p.shape}.")
        if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
            raise ValueError(f"Member {m!r}: probabilities must lie in [0, 1] without NaN.")
        rows.append(p)
    lengths = {m: len(p) for m, p in zip(members, rows, strict=True)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Members' predictions differ in length: {lengths}; score all on the same stays.")
    return np.stack(rows)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _combine_stack(stack: np.ndarray, weights: np.ndarray, method: str) -> np.ndarray:
    if method == "logit":
        z = weights @ _logit(stack)
        return 1.0 / (1.0 + np.exp(-z))
    return weights @ stack


def combine(probabilities: Mapping[str, Any], weights: EnsembleWeights) -> np.ndarray:
    """The ensemble's positive-class probabilities ``[n]``.

    Args:
        probabilities: ``{member: p [n]}`` for exactly the spec's members (same stays, same order).
        weights: the spec.

    Raises:
        ValueError: missing or extra members (named), shapes that differ, probabilities outside [0, 1] or NaN.
    """
    stack = _member_arrays(probabilities, weights.members)
    return _combine_stack(stack, np.asarray(weights.weights), weights.combine)


def simplex_grid(n_members: int, step: float) -> np.ndarray:
    """All weight vectors ``[G, n_members]`` with entries in multiples of ``step`` summing to 1.

    Raises:
        ValueError: ``step`` not in (0, 1] or not dividing 1, or a grid larger than :data:`MAX_GRID_POINTS`.
    """
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}.")
    k = round(1.0 / step)
    if abs(k * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1 (e.g. 0.05, 0.1, 0.25), got {step}.")
    size = math.comb(k + n_members - 1, n_members - 1)
    if size > MAX_GRID_POINTS:
        raise ValueError(f"A step of {step} over {n_members} members gives {size} weight vectors (limit "
                         f"{MAX_GRID_POINTS}); use a larger step or fewer members.")
    points = [c for c in itertools.product(range(k + 1), repeat=n_members - 1) if sum(c) <= k]
    grid = np.array([(*c, k - sum(c)) for c in points], dtype=np.float64) / k
    return grid


def _score(y: np.ndarray, p: np.ndarray, criterion: str) -> float:
    """Higher is better."""
    if criterion == "auroc":
        return float(roc_auc_score(y, p))
    return -float(log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0, 1]))


def fit_weights(
    probabilities: Mapping[str, Any],
    y_true: Any,
    *,
    combine: str = "logit",
    criterion: str = "log_loss",
    step: float = 0.05,
    method: str = "grid",
) -> EnsembleWeights:
    """Choose convex member weights on VALIDATION predictions by a grid search over the simplex or by stacking
    (``method``; see the module docstring).

    Args:
        probabilities: ``{member: p [n]}``, each member's positive-class probabilities on validation stays that
            no member was trained on.
        y_true: binary labels ``[n]`` of those stays.
        combine: ``"logit"`` (default) or ``"probability"``, see the module table.
        criterion: ``"log_loss"`` (default; smooth, so stable on small validation sets) or ``"auroc"``.
        step: grid spacing of the weights (default 0.05: 21 candidates for two members); grid only.
        method: ``"grid"`` (default) or ``"stacking"`` (a logistic regression with non-negative coefficients).

    Returns:
        The best :class:`EnsembleWeights`. Grid: among equally good candidates the one closest to uniform
        weights is chosen. Stacking: the normalised coefficients (uniform when every coefficient is 0, i.e. no
        member adds to the intercept). ``fit_info`` records the method, the criterion (or the stacking intercept
        and coefficients), the validation size and the members' and the ensemble's validation scores.

    Raises:
        ValueError: bad member predictions (see :func:`combine`), labels that are not 0/1 or are all one
            class, a length mismatch, an unknown ``combine``/``criterion``/``method``, or an unusable ``step``.
    """
    if method not in FIT_METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {', '.join(FIT_METHODS)}.")
    if combine not in COMBINE_METHODS:
        raise ValueError(f"Unknown combine {combine!r}; expected one of {', '.join(COMBINE_METHODS)}.")
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}.")
    members = list(probabilities) if isinstance(probabilities, Mapping) else []
    stack = _member_arrays(probabilities, members)
    y = np.asarray(y_true, dtype=np.float64)
    if y.ndim != 1 or len(y) != stack.shape[1]:
        raise ValueError(f"Expected y_true [{stack.shape[1]}] like the predictions, got shape {y.shape}.")
    if np.isnan(y).any() or not np.isin(y, [0.0, 1.0]).all():
        raise ValueError("y_true must hold 0/1 labels without missing values; drop unlabelled stays first.")
    if len(np.unique(y)) < 2:
        raise ValueError("y_true has a single class; weights cannot be fitted on such a validation set.")
    if method == "stacking":
        return _stacking_weights(stack, y, members, combine, criterion)
    grid = simplex_grid(len(members), step)
    scores = np.array([_score(y, _combine_stack(stack, w, combine), criterion) for w in grid])
    best = scores.max()
    tied = np.flatnonzero(scores >= best - 1e-12)
    uniform = np.full(len(members), 1.0 / len(members))
    choice = tied[np.argmin(np.abs(grid[tied] - uniform).sum(axis=1))]
    weights = grid[choice]
    info = {
        "method": "grid",
        "criterion": criterion,
        "step": step,
        "n_validation": int(len(y)),
        "n_positive": int(y.sum()),
        "ensemble_score": float(scores[choice]),
        "member_scores": {m: _score(y, stack[i], criterion) for i, m in enumerate(members)},
    }
    return EnsembleWeights(tuple(members), tuple(float(w) for w in weights), combine, info)


def _stacking_weights(stack: np.ndarray, y: np.ndarray, members: list[str], combine: str,
                      criterion: str) -> EnsembleWeights:
    """Weights from a logistic regression of ``y`` on the members' log-odds (or probabilities), intercept free,
    coefficients >= 0 (L-BFGS-B on the mean log-loss), normalised to sum to 1."""
    from scipy.optimize import minimize
    from scipy.special import expit

    z = _logit(stack) if combine == "logit" else stack

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        s = theta[0] + theta[1:] @ z
        residual = expit(s) - y
        value = float(np.mean(np.logaddexp(0.0, s) - y * s))
        return value, np.concatenate([[residual.mean()], z @ residual / len(y)])

    start = np.concatenate([[0.0], np.full(len(members), 1.0 / len(members))])
    bounds = [(None, None)] + [(0.0, None)] * len(members)
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
    coef = np.clip(result.x[1:], 0.0, None)
    weights = coef / coef.sum() if coef.sum() > 0 else np.full(len(members), 1.0 / len(members))
    info = {
        "method": "stacking",
        "criterion": criterion,
        "intercept": float(result.x[0]),
        "coefficients": {m: float(c) for m, c in zip(members, coef, strict=True)},
        "converged": bool(result.success),
        "n_validation": int(len(y)),
        "n_positive": int(y.sum()),
        "ensemble_score": _score(y, _combine_stack(stack, weights, combine), criterion),
        "member_scores": {m: _score(y, stack[i], criterion) for i, m in enumerate(members)},
    }
    return EnsembleWeights(tuple(members), tuple(float(w) for w in weights), combine, info)
