"""``healthfusion alerts``: a saved risk model as an early-warning system, scored every hour, against NEWS2.

Every stay of the model's source (read with the model's own reader options) is scored at each hour from ``start``
to ``end`` with ``load_model(...).predict`` on the stays cut at that hour (the cohort's leakage guard hides later
events), and NEWS2 (:mod:`healthfusion.evaluation.news2`) is computed from the latest vitals at the same hours.
Both are then compared with :mod:`healthfusion.evaluation.alerts`: at the threshold that keeps each within an alert
budget (alerts per patient-day), and the PPV of NEWS2 at the model's sensitivity (matched sensitivity).
Outputs in ``out``: ``hourly_scores.csv``, ``alerts.csv`` (one row per score and operating point, with bootstrap
intervals over stays: ``<metric>_ci_low``/``_ci_high``, ``n_boot``), ``curves.csv``
and ``alerts.png`` (PPV and alerts per patient-day against sensitivity).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.sources import get_source
from healthfusion.evaluation.alerts import (
    alert_metrics,
    alert_metrics_ci,
    candidate_thresholds,
    threshold_for_budget,
    threshold_for_sensitivity,
)
from healthfusion.evaluation.news2 import PHYSIONET_VITALS, latest_values, news2
from healthfusion.files import display_path
from healthfusion.models.scoring import OK, load_model

log = logging.getLogger(__name__)


def hourly_scores(model, cohort: Cohort, hours: list[float],
                  progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """``stay_id``, ``time``, ``model`` (calibrated risk; NaN where not scorable) and ``news2`` at each hour."""
    events = cohort.read_table("events")
    vitals = [v for names in PHYSIONET_VITALS.values() for v in names if v in set(events["variable"])]
    if not vitals:
        raise ValueError("The source has none of the NEWS2 vitals "
                         f"{[v for names in PHYSIONET_VITALS.values() for v in names]}; NEWS2 cannot be computed.")
    stays = cohort.stays
    frames = []
    for k, h in enumerate(hours):
        cut = Cohort(stays.assign(prediction_time=float(h)), static=cohort.static, events=events, meta=cohort.meta)
        pred = model.predict(cut)
        times = pd.DataFrame({"stay_id": pred["stay_id"], "time": float(h)})
        values = latest_values(events[events["time"] <= h], times, vitals)
        frames.append(times.assign(model=np.where(pred["status"] == OK, pred["probability"], np.nan),
                                   news2=news2(values[vitals])["news2"].to_numpy()))
        if progress is not None:
            progress(k + 1, len(hours))
    return pd.concat(frames, ignore_index=True)


def compare_scores(scores: pd.DataFrame, outcome: pd.Series, *, budget: float, end: float,
                   step: float = 1.0, lockout: float = 4.0, n_boot: int = 1000,
                   seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(operating points, curves): each score at its alert-budget threshold, and NEWS2 at the model's
    sensitivity there, with bootstrap intervals (``<metric>_ci_low``/``_ci_high`` of alerts per patient-day, PPV,
    sensitivity and median lead time; ``n_boot`` stay resamples, ``n_stays`` the n); curves = metrics over
    :func:`candidate_thresholds` of each score."""
    rows, curves = [], []
    per = {name: scores[["stay_id", "time", name]].rename(columns={name: "score"}).dropna() for name in
           ("model", "news2")}

    def point(name: str, s: pd.DataFrame, t: float, label: str) -> dict:
        kw = {"end": end, "step": step, "lockout": lockout}
        cis = alert_metrics_ci(s, outcome, t, n_boot=n_boot, seed=seed, **kw)
        ci = {f"{m}_ci_{side}": getattr(c, f"ci_{side}") for m, c in cis.items() for side in ("low", "high")}
        return {"score": name, "operating_point": label, **alert_metrics(s, outcome, t, **kw), **ci,
                "n_boot": n_boot}

    for name, s in per.items():
        t = threshold_for_budget(s, budget, step=step, lockout=lockout)
        rows.append(point(name, s, t, f"<= {budget:g} alerts per patient-day"))
        for c in candidate_thresholds(s, n=60):
            curves.append({"score": name, **alert_metrics(s, outcome, c, end=end, step=step, lockout=lockout)})
    target = rows[0]["sensitivity"]
    if np.isfinite(target):
        t = threshold_for_sensitivity(per["news2"], outcome, target)
        rows.append(point("news2", per["news2"], t, f"sensitivity >= {target:.3f} (the model's)"))
    return pd.DataFrame(rows), pd.DataFrame(curves)


def _figure(curves: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    for name, c in curves.groupby("score"):
        c = c.sort_values("sensitivity")
        ax1.plot(c["sensitivity"], c["ppv"], marker=".", label=name)
        ax2.plot(c["sensitivity"], c["alerts_per_patient_day"], marker=".", label=name)
    ax1.set(xlabel="sensitivity (stays with the outcome alerted)", ylabel="PPV (alerts in those stays)")
    ax2.set(xlabel="sensitivity", ylabel="alerts per patient-day", yscale="log")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def evaluate_alerts(model_dir: str | Path, path: str | Path, out: str | Path, *, start: float = 6, end: float = 48,
                    step: float = 1.0, n_stays: int | None = None, budget: float = 1.0, lockout: float = 4.0,
                    n_boot: int = 1000, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Run the evaluation (module docs) and write its outputs to ``out``; returns the operating-point table.

    Raises
    ------
    ModelLoadError
        The model folder does not load.
    ValueError
        No data source recorded, a non-binary label, the source lacks the label or the vitals, or bad hours.
    """
    if not 0 <= start < end or step <= 0:
        raise ValueError(f"Need 0 <= start < end and step > 0; got start={start}, end={end}, step={step}.")
    model = load_model(model_dir)
    if model.label.kind != "binary" or not model.data_source:
        raise ValueError(f"{model_dir}: alerts need a binary model that records its data source.")
    cohort = get_source(model.data_source)(path, **model.data_options)
    if n_stays is not None:
        cohort = cohort.subset([str(s) for s in cohort.stay_ids[:n_stays]])
    outcome = cohort.label(model.label.name)
    if outcome.isna().any():
        raise ValueError(f"{int(outcome.isna().sum())} stays of {path} have no {model.label.name!r}; alerts need "
                         "the outcome of every stay.")
    hours = list(np.arange(start, end + 1e-9, step))
    scores = hourly_scores(model, cohort, hours, progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out / "hourly_scores.csv", index=False)
    table, curves = compare_scores(scores, outcome.astype(int), budget=budget, end=end, step=step,
                                   lockout=lockout, n_boot=n_boot)
    table.to_csv(out / "alerts.csv", index=False)
    curves.to_csv(out / "curves.csv", index=False)
    _figure(curves, out / "alerts.png")
    log.info("Wrote the alert evaluation of %d stays x %d hours to %s", len(cohort), len(hours), display_path(out))
    return table
