"""The PhysioNet/Computing in Cardiology Challenge 2012's own scores of in-hospital mortality predictions, as pure
functions (Silva et al., CinC 2012; 39:245-248).

* Event 1 (:func:`event1_score`): min(sensitivity, positive predictivity) of the predicted high-risk group (a stay is
  high risk when its risk is at or above a threshold; in a run, the saved model's operating point chosen on the
  validation stays). Higher is better; the best published score on the challenge's hidden set C was 0.5353 (SAPS-I
  0.3125).
* Event 2 (:func:`hosmer_lemeshow_h`): the challenge's Hosmer-Lemeshow H statistic of the risks: stays sorted by
  risk and cut into 10 groups of ``n // 10`` stays (the ``n % 10`` highest-risk stays left over, as in the
  challenge's scorer); per group ``(O - M c)^2 / (M c (1 - c) + 0.001)`` with ``O`` the deaths, ``M`` the group size
  and ``c`` its mean risk; their sum divided by the range of the group means (highest minus lowest). Lower is
  better; the best published score on set C was 17.88.

* :func:`challenge_scores_with_ci`: both, each with a percentile-bootstrap interval over stays resampled within
  each outcome (the deaths and the survivors keep their counts; the threshold stays fixed), with ``n``.

Example::

    event1_score([1, 0, 1, 0], [0.9, 0.8, 0.2, 0.1], threshold=0.5)   # sensitivity 1/2, PPV 1/2 -> score 0.5
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from healthfusion.evaluation.bootstrap import resample_indices

#: the best published scores on the challenge's hidden test set C, for the reports' context
PUBLISHED_BEST = {"event1": 0.5353, "event1_saps_i": 0.3125, "event2": 17.88}
GROUPS = 10


def _check(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values and y_prob {p.size}; give one risk per stay.")
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold 0/1 outcomes only (no missing values); drop unlabelled stays first.")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("y_prob must hold risks in [0, 1] (no missing values); drop unscored stays first.")
    return y, p


def event1_score(y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> dict:
    """Challenge 2012 event 1 of risks ``y_prob`` ``[n]`` against outcomes ``y_true`` ``[n]`` (0/1).

    Returns
    -------
    dict
        ``score`` = min(sensitivity, positive predictivity) (0 when nobody is predicted high risk or there are
        no deaths), ``sensitivity``, ``ppv``, ``threshold``, ``n``, ``n_positive`` (deaths) and ``n_high`` (stays
        at or above the threshold).

    Raises
    ------
    ValueError
        Mismatched lengths, outcomes other than 0/1, risks outside [0, 1] or missing, or a threshold outside [0, 1].
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    y, p = _check(y_true, y_prob)
    high = p >= threshold
    tp = float(np.sum(high & (y == 1)))
    n_pos, n_high = int(y.sum()), int(high.sum())
    se = tp / n_pos if n_pos else 0.0
    ppv = tp / n_high if n_high else 0.0
    return {"score": min(se, ppv), "sensitivity": se, "ppv": ppv, "threshold": float(threshold), "n": int(y.size),
            "n_positive": n_pos, "n_high": n_high}


def hosmer_lemeshow_h(y_true: ArrayLike, y_prob: ArrayLike) -> dict:
    """Challenge 2012 event 2: the range-normalised Hosmer-Lemeshow H statistic of risks ``y_prob`` ``[n]``
    against outcomes ``y_true`` ``[n]`` (module docstring).

    Returns
    -------
    dict
        ``h`` (the statistic; infinite when every group has the same mean risk), ``n`` (stays given), ``n_used``
        (``10 * (n // 10)``, the stays in the groups), ``group_size`` and per group ``observed``, ``expected`` and
        ``mean_risk`` (lists of 10).

    Raises
    ------
    ValueError
        Fewer than 10 stays, or bad input as in :func:`event1_score`.
    """
    y, p = _check(y_true, y_prob)
    if y.size < GROUPS:
        raise ValueError(f"The H statistic needs at least {GROUPS} stays (10 risk groups); got {y.size}.")
    m = y.size // GROUPS
    order = np.argsort(p, kind="stable")[: m * GROUPS]
    ys, ps = y[order].reshape(GROUPS, m), p[order].reshape(GROUPS, m)
    observed, centre = ys.sum(axis=1), ps.mean(axis=1)
    expected = m * centre
    terms = (observed - expected) ** 2 / (m * centre * (1 - centre) + 0.001)
    spread = centre[-1] - centre[0]
    h = float(terms.sum() / spread) if spread > 0 else float("inf")
    return {"h": h, "n": int(y.size), "n_used": int(m * GROUPS), "group_size": int(m),
            "observed": observed.tolist(), "expected": expected.tolist(), "mean_risk": centre.tolist()}


def _event1_batch(y: np.ndarray, p: np.ndarray, threshold: float) -> np.ndarray:
    """Event 1 of each row of ``y``/``p`` ``[b, n]`` (the same rule as :func:`event1_score`)."""
    high = p >= threshold
    tp = np.sum(high & (y == 1), axis=1)
    n_pos, n_high = y.sum(axis=1), high.sum(axis=1)
    se = np.divide(tp, n_pos, out=np.zeros(len(y)), where=n_pos > 0)
    ppv = np.divide(tp, n_high, out=np.zeros(len(y)), where=n_high > 0)
    return np.minimum(se, ppv)


def _h_batch(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The H statistic of each row of ``y``/``p`` ``[b, n]`` (the same rule as :func:`hosmer_lemeshow_h`)."""
    b, n = p.shape
    m = n // GROUPS
    order = np.argsort(p, axis=1, kind="stable")[:, : m * GROUPS]
    ys = np.take_along_axis(y, order, axis=1).reshape(b, GROUPS, m)
    ps = np.take_along_axis(p, order, axis=1).reshape(b, GROUPS, m)
    observed, centre = ys.sum(axis=2), ps.mean(axis=2)
    terms = (observed - m * centre) ** 2 / (m * centre * (1 - centre) + 0.001)
    spread = centre[:, -1] - centre[:, 0]
    return np.divide(terms.sum(axis=1), spread, out=np.full(b, np.inf), where=spread > 0)


def challenge_scores_with_ci(y_true: ArrayLike, y_prob: ArrayLike, threshold: float, n_boot: int = 1000,
                             seed: int = 0, alpha: float = 0.05) -> dict:
    """Event 1 at ``threshold`` and event 2 (H) of risks ``y_prob`` ``[n]`` against outcomes ``y_true`` ``[n]``,
    each with a percentile-bootstrap ``1 - alpha`` interval: ``n_boot`` resamples of the stays drawn with
    replacement within each outcome (:func:`healthfusion.evaluation.bootstrap.resample_indices`, so the same
    ``seed`` gives every model scored on the same stays the same resamples).

    Returns
    -------
    dict
        The :func:`event1_score` fields (``score`` renamed ``event1``), ``event1_ci_low``/``event1_ci_high``,
        ``event2_h``, ``event2_h_ci_low``/``event2_h_ci_high``, ``n_event2`` (stays in the 10 groups) and
        ``n_boot``. H and its interval are ``nan`` for fewer than 10 stays; resamples where every group has the
        same mean risk (H infinite) count at the top of the interval. Read the H interval as the spread of H on
        another test set of the same size: every resample adds sampling noise to the groups' death counts, which
        H counts as miscalibration, so the interval sits above a well-calibrated model's point value and may
        exclude it.

    Raises
    ------
    ValueError
        Bad input as in :func:`event1_score`, ``n_boot < 1`` or ``alpha`` outside (0, 1).
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"Expected alpha in (0, 1) (0.05 gives a 95% interval), got {alpha!r}.")
    e1 = event1_score(y_true, y_prob, threshold)
    y, p = _check(y_true, y_prob)
    q = [alpha / 2.0, 1.0 - alpha / 2.0]
    boot1, boot2 = [], []
    for idx in resample_indices(y, n_boot, seed, stratified=True):
        boot1.append(_event1_batch(y[idx], p[idx], e1["threshold"]))
        if y.size >= GROUPS:
            boot2.append(_h_batch(y[idx], p[idx]))
    low1, high1 = np.quantile(np.concatenate(boot1), q)
    out = {"event1": e1["score"], "event1_ci_low": float(low1), "event1_ci_high": float(high1),
           **{k: v for k, v in e1.items() if k != "score"}}
    if y.size >= GROUPS:
        h = hosmer_lemeshow_h(y, p)
        low2, high2 = np.quantile(np.concatenate(boot2), q, method="inverted_cdf")
        out.update(event2_h=h["h"], event2_h_ci_low=float(low2), event2_h_ci_high=float(high2), n_event2=h["n_used"])
    else:
        out.update(event2_h=float("nan"), event2_h_ci_low=float("nan"), event2_h_ci_high=float("nan"), n_event2=0)
    out["n_boot"] = int(n_boot)
    return out
