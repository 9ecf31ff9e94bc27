"""Early-warning metrics of an hourly score (pure functions): alerts per patient-day, PPV and sensitivity, lead time,
thresholds at a fixed alert budget or a matched sensitivity.

Input: ``scores`` with one row per stay and scoring time (``stay_id``, ``time`` in hours, ``score``) and
``outcome``, a 0/1 Series indexed by stay id. An **alert** fires at a scoring time with ``score >= threshold``
unless the same stay alerted less than ``lockout`` hours before (default 4 h, the stream cooldown of
:mod:`healthfusion.serve.streams`): a stay above the threshold all day alerts every ``lockout`` hours, as a ward's
alarm with a suppression window would. Definitions:

- ``alerts_per_patient_day`` = alerts / (stays x monitored hours / 24), monitored hours = last - first scoring
  time + the ``step`` of one scoring interval;
- ``ppv`` = share of alerts that fall in stays with the outcome; ``sensitivity`` = share of stays with the
  outcome that got at least one alert;
- ``lead_time`` = ``end`` - the time of the first alert, over the alerted stays with the outcome (median and IQR;
  the outcome is only known to happen after the window, so this is the warning before the window closes).

Confidence intervals (:func:`alert_metrics_ci`) resample stays, not scoring times: a stay's alerts are correlated,
so the unit of the bootstrap is the patient (stratified by outcome, percentile intervals; ``n`` = stays).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthfusion.evaluation.bootstrap import BootstrapCI, _percentile_interval, resample_indices

#: the metrics :func:`alert_metrics_ci` gives intervals for
CI_METRICS = ("alerts_per_patient_day", "ppv", "sensitivity", "lead_time_median")


def _check(scores: pd.DataFrame, outcome: pd.Series) -> pd.DataFrame:
    missing = [c for c in ("stay_id", "time", "score") if c not in scores.columns]
    if missing:
        raise ValueError(f"scores lacks column(s) {missing}; expected stay_id, time, score.")
    absent = set(scores["stay_id"]) - set(outcome.index)
    if absent:
        raise ValueError(f"{len(absent)} scored stays have no outcome (e.g. {sorted(absent)[:3]}); pass the outcome "
                         "of every scored stay.")
    bad = outcome[~outcome.isin([0, 1])]
    if len(bad):
        raise ValueError(f"outcome must be 0/1; stay {bad.index[0]!r} has {bad.iloc[0]!r}.")
    return scores.sort_values(["stay_id", "time"], kind="stable").reset_index(drop=True)


def _grid(scores: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(stay ids, scoring times [H], scores [S, H] with NaN where a stay has no score at a time)."""
    table = scores.pivot_table(index="stay_id", columns="time", values="score", aggfunc="last")
    return table.index, table.columns.to_numpy(dtype=float), table.to_numpy(dtype=float)


def _fire(times: np.ndarray, values: np.ndarray, threshold: float, lockout: float) -> np.ndarray:
    """[S, H] bool: where an alert fires (above the threshold, no alert of the stay in the last ``lockout`` h)."""
    fired = np.zeros(values.shape, dtype=bool)
    last = np.full(values.shape[0], -np.inf)
    with np.errstate(invalid="ignore"):
        above = values >= threshold
    for h, t in enumerate(times):
        fired[:, h] = above[:, h] & (t - last >= lockout)
        last = np.where(fired[:, h], t, last)
    return fired


def alert_times(scores: pd.DataFrame, threshold: float, lockout: float = 4.0) -> pd.DataFrame:
    """The alerts (see the module docs) as rows ``stay_id``, ``time``, sorted by stay and time."""
    ids, times, values = _grid(scores)
    rows, cols = np.nonzero(_fire(times, values, threshold, lockout))
    return pd.DataFrame({"stay_id": ids[rows], "time": times[cols]})


def alert_metrics(scores: pd.DataFrame, outcome: pd.Series, threshold: float, *, end: float,
                  step: float = 1.0, lockout: float = 4.0) -> dict[str, float]:
    """``n_alerts``, ``alerts_per_patient_day``, ``ppv``, ``sensitivity``, ``lead_time_median``, ``lead_time_q1``,
    ``lead_time_q3``, ``n_stays``, ``n_positive`` at ``threshold`` (definitions in the module docs; NaN where
    undefined, e.g. PPV without alerts).

    Raises
    ------
    ValueError
        Missing columns, a scored stay without outcome, or an outcome other than 0/1.
    """
    s = _check(scores, outcome)
    alerts = alert_times(s, threshold, lockout)
    y = outcome.reindex(s["stay_id"].unique())
    span = s.groupby("stay_id")["time"].agg(lambda t: t.max() - t.min() + step)
    days = float(span.sum()) / 24.0
    positive_alerts = alerts["stay_id"].map(outcome).to_numpy()
    alerted = set(alerts["stay_id"])
    positives = y.index[y == 1]
    first = alerts.groupby("stay_id")["time"].min()
    leads = end - first.reindex([p for p in positives if p in alerted]).to_numpy(dtype=float)
    q = np.quantile(leads, [0.25, 0.5, 0.75]) if len(leads) else [np.nan] * 3
    return {
        "threshold": float(threshold), "n_stays": int(len(y)), "n_positive": int(len(positives)),
        "n_alerts": int(len(alerts)), "alerts_per_patient_day": len(alerts) / days if days > 0 else np.nan,
        "ppv": float(positive_alerts.mean()) if len(alerts) else np.nan,
        "sensitivity": float(np.mean([p in alerted for p in positives])) if len(positives) else np.nan,
        "lead_time_q1": float(q[0]), "lead_time_median": float(q[1]), "lead_time_q3": float(q[2]),
    }


def alert_metrics_ci(scores: pd.DataFrame, outcome: pd.Series, threshold: float, *, end: float,
                     step: float = 1.0, lockout: float = 4.0, n_boot: int = 1000, alpha: float = 0.05,
                     seed: int = 0) -> dict[str, BootstrapCI]:
    """Percentile-bootstrap intervals of :data:`CI_METRICS` at ``threshold``, resampling stays with replacement
    within each outcome (the alerts are fired once; a resample re-weights whole stays). ``n`` of each interval is
    the number of stays; a resample where a metric is undefined (PPV without alerts) is skipped and counted.

    Raises
    ------
    ValueError
        As :func:`alert_metrics`, or ``n_boot < 1``.
    """
    s = _check(scores, outcome)
    ids, times, values = _grid(s)
    fired = _fire(times, values, threshold, lockout)
    y = outcome.reindex(ids).to_numpy(dtype=float)
    span = s.groupby("stay_id")["time"].agg(lambda t: t.max() - t.min() + step).reindex(ids).to_numpy(dtype=float)
    n_alerts = fired.sum(axis=1).astype(float)
    first = np.where(fired.any(axis=1), times[np.argmax(fired, axis=1)], np.nan)
    lead = np.where((y == 1) & ~np.isnan(first), end - first, np.nan)
    point = alert_metrics(s, outcome, threshold, end=end, step=step, lockout=lockout)
    draws: dict[str, list[np.ndarray]] = {m: [] for m in CI_METRICS}
    with np.errstate(invalid="ignore", divide="ignore"):
        for idx in resample_indices(y, n_boot=n_boot, seed=seed):
            alerts, pos = n_alerts[idx], y[idx]
            draws["alerts_per_patient_day"].append(alerts.sum(axis=1) / (span[idx].sum(axis=1) / 24.0))
            draws["ppv"].append((alerts * pos).sum(axis=1) / alerts.sum(axis=1))
            draws["sensitivity"].append(((alerts > 0) & (pos == 1)).sum(axis=1) / (pos == 1).sum(axis=1))
            leads = lead[idx]
            any_lead = ~np.isnan(leads).all(axis=1)
            median = np.full(len(idx), np.nan)
            if any_lead.any():
                median[any_lead] = np.nanmedian(leads[any_lead], axis=1)
            draws["lead_time_median"].append(median)
    out = {}
    for metric in CI_METRICS:
        low, high, skipped = _percentile_interval(np.concatenate(draws[metric]), alpha)
        out[metric] = BootstrapCI(value=float(point[metric]), ci_low=low, ci_high=high, n=len(ids), n_boot=n_boot,
                                  n_skipped=skipped, alpha=alpha)
    return out


def candidate_thresholds(scores: pd.DataFrame, n: int = 200) -> np.ndarray:
    """The distinct scores when there are at most ``n``, else ``n`` quantiles of them (ascending)."""
    values = np.unique(scores["score"].to_numpy(dtype=float))
    values = values[np.isfinite(values)]
    return values if len(values) <= n else np.unique(np.quantile(values, np.linspace(0, 1, n)))


def threshold_for_budget(scores: pd.DataFrame, budget: float, *, step: float = 1.0, lockout: float = 4.0) -> float:
    """The lowest threshold among :func:`candidate_thresholds` whose alerts per patient-day do not exceed ``budget``
    (inf if even the highest score alerts more often). With a lockout the alert count is not monotone in the
    threshold, so every candidate is checked."""
    ids, times, values = _grid(scores)
    days = float(scores.groupby("stay_id")["time"].agg(lambda t: t.max() - t.min() + step).sum()) / 24.0
    for t in candidate_thresholds(scores):
        if _fire(times, values, t, lockout).sum() / days <= budget:
            return float(t)
    return float("inf")


def threshold_for_sensitivity(scores: pd.DataFrame, outcome: pd.Series, target: float) -> float:
    """The highest threshold among the scores whose sensitivity (stays with the outcome alerted at least once) is at
    least ``target`` (-inf if none reaches it). Used to compare PPV of two scores at matched sensitivity."""
    best = scores.groupby("stay_id")["score"].max()  # a stay is alerted iff its maximum reaches the threshold
    pos = best.reindex(outcome.index[outcome == 1]).dropna().to_numpy()
    if not len(pos):
        return float("-inf")
    ordered = np.sort(pos)[::-1]
    k = int(np.ceil(target * len(pos)))
    return float(ordered[k - 1]) if 1 <= k <= len(ordered) else float("-inf")
