"""Aggregation rules of federated learning: pure functions over lists of numpy arrays.

A model's weights are a list of arrays (one per parameter tensor, in ``state_dict`` order); a round's site
updates are a list of such lists, one per site that took part. Nothing here knows about torch or Flower.

* :func:`fedavg` - the sample-weighted mean (McMahan et al., 2017).
* :func:`coordinate_median` and :func:`trimmed_mean` - robust rules: per coordinate, the median or the mean after
  dropping the ``beta`` fraction of the largest and smallest values (Yin et al., 2018); one corrupted site cannot
  move them arbitrarily far.
* :func:`dp_mean` - differential privacy at the server (DP-FedAvg with fixed clipping, McMahan et al., 2018): each
  site's update ``site - current`` is clipped to L2 norm ``clip_norm`` (over all its floating arrays together),
  the clipped updates are averaged uniformly and Gaussian noise of standard deviation
  ``noise_multiplier * clip_norm / n_sites`` is added per coordinate; the result bounds what the model reveals
  about any one site's whole contribution (site-level DP).
* :func:`server_step` - adaptive server optimisers FedAdagrad, FedAdam and FedYogi (Reddi et al., 2021): the
  averaged update ``delta = average - current`` is treated as a pseudo-gradient.

Example::

    new = fedavg([site_a, site_b], weights=[120, 80])
    new, state = server_step("adam", current, new, state=None, lr=0.1)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Weights = list[np.ndarray]


class AggregationError(ValueError):
    """Site updates that cannot be aggregated (none, different shapes, bad weights, unknown rule)."""


def _check_updates(updates: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    if len(updates) == 0:
        raise AggregationError("No site updates to aggregate; at least one site must report weights.")
    first = [np.asarray(a) for a in updates[0]]
    out = [first]
    for k, update in enumerate(updates[1:], start=1):
        arrays = [np.asarray(a) for a in update]
        if len(arrays) != len(first):
            raise AggregationError(
                f"Site update {k} has {len(arrays)} arrays but update 0 has {len(first)}; every site must send "
                "the weights of the same model architecture."
            )
        for j, (a, b) in enumerate(zip(arrays, first, strict=True)):
            if a.shape != b.shape:
                raise AggregationError(
                    f"Site update {k}, array {j} has shape {a.shape} but update 0 has {b.shape}; every site "
                    "must send the weights of the same model architecture."
                )
        out.append(arrays)
    return out


def fedavg(updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float] | None = None) -> Weights:
    """Weighted mean of the site updates, array by array.

    Parameters
    ----------
    updates : sequence of K lists of arrays
        Each site's weights (same shapes across sites).
    weights : sequence of K non-negative floats, optional
        Usually each site's number of training samples. Default: equal weights.

    Returns
    -------
    list of float64 arrays, the shapes of one update.

    Raises
    ------
    AggregationError
        No updates, mismatched shapes, a negative/non-finite weight, a weights length other than K or weights
        summing to 0.
    """
    arrays = _check_updates(updates)
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(arrays),):
        raise AggregationError(f"Got {w.size} weights for {len(arrays)} site updates; pass one weight per site.")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise AggregationError(f"Site weights must be finite, non-negative and not all 0; got {w.tolist()}.")
    w = w / w.sum()
    return [sum(wk * site[j].astype(np.float64) for wk, site in zip(w, arrays, strict=True))
            for j in range(len(arrays[0]))]


def coordinate_median(updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float] | None = None) -> Weights:
    """Coordinate-wise median of the site updates (unweighted; ``weights`` is accepted and ignored so that every
    rule has one signature). With an even number of sites, the mean of the two middle values."""
    del weights
    arrays = _check_updates(updates)
    return [np.median(np.stack([site[j] for site in arrays]).astype(np.float64), axis=0)
            for j in range(len(arrays[0]))]


def trimmed_mean(
    updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float] | None = None, beta: float = 0.2
) -> Weights:
    """Coordinate-wise trimmed mean: per coordinate, drop the ``floor(beta * K)`` largest and as many smallest of
    the K site values, and average the rest (unweighted; ``weights`` is ignored).

    Raises
    ------
    AggregationError
        ``beta`` outside [0, 0.5), or trimming that would leave no value.
    """
    del weights
    arrays = _check_updates(updates)
    if not 0.0 <= beta < 0.5:
        raise AggregationError(f"trimmed_mean needs 0 <= beta < 0.5; got beta={beta}.")
    k = len(arrays)
    cut = int(math.floor(beta * k))
    if k - 2 * cut < 1:
        raise AggregationError(f"trimmed_mean with beta={beta} leaves no value of {k} sites; lower beta.")
    out = []
    for j in range(len(arrays[0])):
        stacked = np.sort(np.stack([site[j] for site in arrays]).astype(np.float64), axis=0)
        out.append(stacked[cut:k - cut].mean(axis=0))
    return out


def clip_update(update: Sequence[np.ndarray], clip_norm: float) -> tuple[Weights, float]:
    """``update`` scaled by ``min(1, clip_norm / norm)`` and its L2 norm before clipping (floating arrays only;
    integer arrays such as counters are returned unchanged and not counted).

    Raises
    ------
    AggregationError
        If ``clip_norm <= 0``.
    """
    if not clip_norm > 0:
        raise AggregationError(f"clip_norm must be > 0; got {clip_norm}.")
    arrays = [np.asarray(a) for a in update]
    norm = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays
                         if np.issubdtype(a.dtype, np.floating)))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [a * scale if np.issubdtype(a.dtype, np.floating) else a for a in arrays], norm


def dp_mean(
    current: Sequence[np.ndarray],
    updates: Sequence[Sequence[np.ndarray]],
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[Weights, list[float]]:
    """Server-side DP aggregation: ``current + mean_i(clip(update_i - current)) + N(0, (sigma C / n)^2)``.

    Parameters
    ----------
    current : list of arrays
        The global weights the sites started the round from.
    updates : sequence of list of arrays
        The sites' new weights (n sites).
    clip_norm : float
        C, the L2 bound of each site's update (all floating arrays together).
    noise_multiplier : float
        sigma, the noise's standard deviation as a multiple of the mean's sensitivity ``C / n``; 0 clips only.
    rng : numpy Generator
        The noise's source (seed it per round for a reproducible run).

    Returns
    -------
    (weights, norms)
        The new global weights (integer arrays: the unweighted mean of the sites', rounded) and each site's update
        norm before clipping.

    Raises
    ------
    AggregationError
        No updates, mismatched shapes, ``clip_norm <= 0`` or ``noise_multiplier < 0``.
    """
    arrays = _check_updates([list(current), *updates])
    base, sites = arrays[0], arrays[1:]
    if not sites:
        raise AggregationError("No site updates to aggregate; at least one site must report weights.")
    if noise_multiplier < 0:
        raise AggregationError(f"noise_multiplier must be >= 0; got {noise_multiplier}.")
    clipped, norms = [], []
    for site in sites:
        delta, norm = clip_update([u - b if np.issubdtype(b.dtype, np.floating) else u
                                   for u, b in zip(site, base, strict=True)], clip_norm)
        clipped.append(delta)
        norms.append(norm)
    n = len(sites)
    std = noise_multiplier * clip_norm / n
    out = []
    for j, b in enumerate(base):
        mean = np.mean([c[j] for c in clipped], axis=0)
        if np.issubdtype(b.dtype, np.floating):
            out.append((b + mean + rng.normal(0.0, std, size=b.shape)).astype(b.dtype))
        else:
            out.append(np.rint(mean).astype(b.dtype))
    return out, norms


AGGREGATORS: dict[str, Callable[..., Weights]] = {
    "fedavg": fedavg,
    "median": coordinate_median,
    "trimmed_mean": trimmed_mean,
}


def get_aggregator(name: str) -> Callable[..., Weights]:
    """The aggregation rule registered as ``name`` (see ``AGGREGATORS``).

    Raises
    ------
    AggregationError
        For an unknown name, with the closest known one.
    """
    if name not in AGGREGATORS:
        close = difflib.get_close_matches(name, AGGREGATORS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AggregationError(f"Unknown aggregation rule {name!r}; choose one of {list(AGGREGATORS)}.{hint}")
    return AGGREGATORS[name]


# ------------------------------------------------------------------------------------ adaptive server optimisers
SERVER_OPTIMIZERS = ("adagrad", "adam", "yogi")


@dataclass
class ServerOptState:
    """Moments of an adaptive server optimiser: first moment ``m``, second moment ``v`` and the step count."""

    m: Weights = field(default_factory=list)
    v: Weights = field(default_factory=list)
    step: int = 0


def server_step(
    kind: str,
    current: Sequence[np.ndarray],
    averaged: Sequence[np.ndarray],
    state: ServerOptState | None = None,
    *,
    lr: float = 0.1,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
) -> tuple[Weights, ServerOptState]:
    """One step of FedAdagrad / FedAdam / FedYogi (Reddi et al., 2021, Algorithm 2).

    With ``delta = averaged - current`` (the pseudo-gradient, e.g. from :func:`fedavg`)::

        m = beta1 * m + (1 - beta1) * delta
        v = v + delta**2                                       (adagrad)
        v = beta2 * v + (1 - beta2) * delta**2                 (adam)
        v = v - (1 - beta2) * delta**2 * sign(v - delta**2)    (yogi)
        new = current + lr * m / (sqrt(v) + tau)

    ``m`` and ``v`` start at 0 (no bias correction, as in the paper).

    Parameters
    ----------
    kind : {"adagrad", "adam", "yogi"}
    current : list of arrays
        The global weights before the round.
    averaged : list of arrays
        The aggregate of the round's site weights.
    state : ServerOptState, optional
        The previous step's state; None on the first round.
    lr, beta1, beta2, tau : float
        Server learning rate (eta), moment decays and the adaptivity floor.

    Returns
    -------
    (list of float64 arrays, ServerOptState)
        The new global weights and the state for the next round (a new object; ``state`` is not modified).

    Raises
    ------
    AggregationError
        Unknown ``kind`` or ``current``/``averaged``/``state`` of different shapes.
    """
    if kind not in SERVER_OPTIMIZERS:
        close = difflib.get_close_matches(kind, SERVER_OPTIMIZERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise AggregationError(f"Unknown server optimiser {kind!r}; choose one of {list(SERVER_OPTIMIZERS)}.{hint}")
    cur, avg = _check_updates([current, averaged])
    cur = [a.astype(np.float64) for a in cur]
    delta = [a.astype(np.float64) - c for a, c in zip(avg, cur, strict=True)]
    if state is None or not state.m:
        m_prev = [np.zeros_like(d) for d in delta]
        v_prev = [np.zeros_like(d) for d in delta]
        step = 0
    else:
        _check_updates([cur, state.m, state.v])
        m_prev, v_prev, step = state.m, state.v, state.step
    m = [beta1 * mp + (1 - beta1) * d for mp, d in zip(m_prev, delta, strict=True)]
    if kind == "adagrad":
        v = [vp + d**2 for vp, d in zip(v_prev, delta, strict=True)]
    elif kind == "adam":
        v = [beta2 * vp + (1 - beta2) * d**2 for vp, d in zip(v_prev, delta, strict=True)]
    else:
        v = [vp - (1 - beta2) * d**2 * np.sign(vp - d**2) for vp, d in zip(v_prev, delta, strict=True)]
    new = [c + lr * mi / (np.sqrt(vi) + tau) for c, mi, vi in zip(cur, m, v, strict=True)]
    return new, ServerOptState(m=m, v=v, step=step + 1)
