"""Post-hoc calibration of a binary model's probabilities, fitted on validation predictions only and saved (as
JSON) in the model folder, so that every scorer applies the same map.

=============  =====================================================================================================
method         calibrated probability
=============  =====================================================================================================
``temperature``  ``sigmoid(logit(p) / T)``: one parameter, keeps the ranking (AUROC unchanged)
``platt``        ``sigmoid(a * logit(p) + b)``: slope and intercept (fixes risks inflated by class weighting)
``isotonic``     a monotone piecewise-linear map through the isotonic-regression knots, flat outside them
``none``         ``p`` unchanged
=============  =====================================================================================================

:func:`choose_calibrator` fits each candidate in K-fold cross-validation *within* the validation stays, keeps the
one with the lowest held-out log loss (ties go to the simpler map, in the order above) and refits it on all of
them. Never fit a calibrator on test stays: its test metrics would be optimistic.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = (rng.random(400) < 0.2).astype(float)
>>> p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, 400), 0.01, 0.99)   # inflated risks
>>> cal = choose_calibrator(y, p)
>>> bool(abs(cal.transform(p).mean() - y.mean()) < 0.02)
True
>>> Calibrator.from_dict(cal.to_dict()).transform([0.5]) == cal.transform([0.5])
array([ True])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

CALIBRATION_METHODS: tuple[str, ...] = ("temperature", "platt", "isotonic")
_ALL_METHODS = (*CALIBRATION_METHODS, "none")
_EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _log_loss(y: np.ndarray, q: np.ndarray) -> float:
    q = np.clip(q, _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def _check(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"Calibration needs one label per probability; got {y.size} labels and {p.size} "
                         "probabilities.")
    if np.isnan(y).any() or np.isnan(p).any():
        raise ValueError("Calibration got missing labels or probabilities; pass only scored, labelled stays.")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"Calibration needs 0/1 labels; got values {sorted(set(y.tolist()) - {0.0, 1.0})[:5]}.")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("Calibration needs probabilities in [0, 1].")
    if y.min() == y.max():
        raise ValueError("Calibration needs both outcomes in the validation stays; got a single class.")
    return y, p


class Calibrator:
    """A fitted or unfitted map from a model's probabilities to calibrated ones.

    Parameters
    ----------
    method : "temperature" | "platt" | "isotonic" | "none", default "temperature"
        See the module table.

    Attributes
    ----------
    params_ : dict
        The fitted map: ``temperature``; ``slope``, ``intercept``; ``x``, ``y`` (isotonic knots); nothing for none.
    n_fit_ : int
        Number of validation predictions it was fitted on.
    info_ : dict
        How it was chosen (held-out log loss per candidate), filled by :func:`choose_calibrator`.

    Raises
    ------
    ValueError
        On :meth:`fit`: unknown method, mismatched lengths, NaN, labels other than 0/1, a single class.
    """

    def __init__(self, method: str = "temperature"):
        self.method = method

    def fit(self, y_true: Any, y_prob: Any) -> Calibrator:
        """Fit on validation labels ``[n]`` and predicted probabilities ``[n]``; returns self."""
        if self.method not in _ALL_METHODS:
            raise ValueError(f"Unknown calibration method {self.method!r}; expected one of {', '.join(_ALL_METHODS)}.")
        y, p = _check(y_true, y_prob)
        z = _logit(p)
        if self.method == "temperature":
            def nll(log_t: float) -> float:
                return _log_loss(y, expit(z / np.exp(log_t)))

            self.params_ = {"temperature": float(np.exp(minimize_scalar(nll, bounds=(-5, 5), method="bounded").x))}
        elif self.method == "platt":
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
            self.params_ = {"slope": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}
        elif self.method == "isotonic":
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
            self.params_ = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        else:
            self.params_ = {}
        self.n_fit_ = int(y.size)
        self.info_: dict[str, Any] = getattr(self, "info_", {})
        return self

    def transform(self, y_prob: Any) -> np.ndarray:
        """Calibrated probabilities, the shape of ``y_prob``; NaN stays NaN.

        Raises
        ------
        ValueError
            If called before :meth:`fit`.
        """
        if not hasattr(self, "params_"):
            raise ValueError("This Calibrator is not fitted; call fit(y_val, p_val) on validation predictions first.")
        p = np.asarray(y_prob, dtype=float)
        if self.method == "temperature":
            out = expit(_logit(p) / self.params_["temperature"])
        elif self.method == "platt":
            out = expit(self.params_["slope"] * _logit(p) + self.params_["intercept"])
        elif self.method == "isotonic":
            out = np.interp(p, self.params_["x"], self.params_["y"])
        else:
            out = p.copy()
        return np.where(np.isnan(p), np.nan, out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (method, parameters, fit size, how it was chosen)."""
        if not hasattr(self, "params_"):
            raise ValueError("An unfitted Calibrator has no state to save; fit it first.")
        return {"method": self.method, "params": self.params_, "n_fit": self.n_fit_, "info": self.info_}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict`.

        Raises
        ------
        ValueError
            Unknown method or parameters missing for it (naming the key).
        """
        method = state.get("method") if isinstance(state, dict) else None
        if method not in _ALL_METHODS:
            raise ValueError(f"calibrator.method is {method!r}; expected one of {', '.join(_ALL_METHODS)}.")
        needed = {"temperature": ("temperature",), "platt": ("slope", "intercept"), "isotonic": ("x", "y"),
                  "none": ()}[method]
        params = state.get("params") or {}
        missing = [k for k in needed if k not in params]
        if missing:
            raise ValueError(f"calibrator.params lacks {missing} for method {method!r}.")
        obj = cls(method)
        obj.params_ = dict(params)
        obj.n_fit_ = int(state.get("n_fit", 0))
        obj.info_ = dict(state.get("info") or {})
        return obj


def choose_calibrator(y_true: Any, y_prob: Any, methods: Sequence[str] = CALIBRATION_METHODS, folds: int = 5,
                      seed: int = 0) -> Calibrator:
    """The candidate with the lowest ``folds``-fold held-out log loss on the validation stays, refitted on all.

    ``"none"`` is always a candidate, so a model that is already calibrated keeps its probabilities. With fewer
    than ``folds`` stays of either class the folds shrink to that count (at least 2).

    Raises
    ------
    ValueError
        As :meth:`Calibrator.fit`, or an unknown method.
    """
    y, p = _check(y_true, y_prob)
    unknown = [m for m in methods if m not in _ALL_METHODS]
    if unknown:
        raise ValueError(f"Unknown calibration method(s) {unknown}; expected some of {', '.join(_ALL_METHODS)}.")
    candidates = ["none", *[m for m in methods if m != "none"]]
    k = int(min(folds, np.bincount(y.astype(int)).min()))
    scores = {}
    if k >= 2:
        splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(p, y))
        for method in candidates:
            held = np.empty_like(p)
            try:
                for fit_idx, test_idx in splits:
                    held[test_idx] = Calibrator(method).fit(y[fit_idx], p[fit_idx]).transform(p[test_idx])
            except ValueError:  # a fold with one class: the candidate cannot be judged
                continue
            scores[method] = _log_loss(y, held)
    order = {m: i for i, m in enumerate(("none", *CALIBRATION_METHODS))}
    best = min(scores, key=lambda m: (round(scores[m], 6), order[m])) if scores else "none"
    chosen = Calibrator(best).fit(y, p)
    chosen.info_ = {"chosen_by": f"{k}-fold held-out log loss on the validation stays", "log_loss": scores}
    return chosen
