"""Clinical impact: decision-curve analysis and a what-if calculator for an intervention triggered by the model.

Net benefit at threshold probability ``t`` (Vickers & Elkin 2006): ``TP/n - FP/n * t / (1 - t)``, the benefit of
treating the flagged stays in units of true positives, where a false positive costs ``t / (1 - t)`` of a true
positive. "Treat all" has ``prevalence - (1 - prevalence) * t / (1 - t)``; "treat none" has 0.

The what-if calculator applies an intervention to every stay the model flags at a threshold and reports, for the
evaluated cohort and per 1,000 stays, the expected events avoided and the net cost, with its assumptions spelled
out next to the numbers.

Example
-------
>>> curve = decision_curve([0, 1, 1, 0], [0.2, 0.8, 0.6, 0.4], thresholds=[0.5])
>>> float(curve.loc[0, "net_benefit_model"])
0.5
>>> r = what_if([0, 1, 1, 0], [0.2, 0.8, 0.6, 0.4], threshold=0.5, effectiveness=0.5,
...             intervention_cost=100.0, event_cost=1000.0)
>>> r.events_avoided, r.net_cost
(1.0, -800.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from healthfusion.evaluation.metrics import check_binary_input

ArrayLike = Any


def net_benefit(y_true: ArrayLike, y_prob: ArrayLike, threshold: float) -> float:
    """Net benefit of treating stays with ``y_prob >= threshold`` (threshold in (0, 1))."""
    y, p = check_binary_input(y_true, y_prob)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1) for net benefit, got {threshold}.")
    flagged = p >= threshold
    tp = float(np.sum(flagged & (y == 1)))
    fp = float(np.sum(flagged & (y == 0)))
    return tp / y.size - fp / y.size * threshold / (1 - threshold)


def decision_curve(y_true: ArrayLike, y_prob: ArrayLike, thresholds: ArrayLike | None = None) -> pd.DataFrame:
    """Net benefit of the model, "treat all" and "treat none" across ``thresholds`` (default 0.01..0.99 by 0.01):
    columns ``threshold``, ``net_benefit_model``, ``net_benefit_all``, ``net_benefit_none``."""
    y, p = check_binary_input(y_true, y_prob)
    ts = np.arange(0.01, 1.0, 0.01) if thresholds is None else np.asarray(thresholds, dtype=float)
    prevalence = float(y.mean())
    rows = [{"threshold": float(t), "net_benefit_model": net_benefit(y, p, float(t)),
             "net_benefit_all": prevalence - (1 - prevalence) * t / (1 - t), "net_benefit_none": 0.0} for t in ts]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class WhatIf:
    """Result of :func:`what_if`; counts and costs for the evaluated cohort (``per_1000`` scales them)."""

    threshold: float
    n: int
    events: int
    flagged: int
    events_flagged: int
    events_avoided: float
    intervention_cost: float
    savings: float
    net_cost: float
    number_needed_to_treat: float
    assumptions: tuple[str, ...]

    def per_1000(self) -> dict[str, float]:
        """Flagged stays, events avoided and net cost per 1,000 stays."""
        scale = 1000.0 / self.n
        return {"flagged": self.flagged * scale, "events_avoided": self.events_avoided * scale,
                "net_cost": self.net_cost * scale}

    def to_dict(self) -> dict:
        return {**asdict(self), "assumptions": list(self.assumptions), "per_1000": self.per_1000()}


def what_if(y_true: ArrayLike, y_prob: ArrayLike, *, threshold: float, effectiveness: float,
            intervention_cost: float, event_cost: float, currency: str = "") -> WhatIf:
    """Expected events avoided and net cost if every stay with ``y_prob >= threshold`` gets the intervention.

    Parameters
    ----------
    effectiveness : float in [0, 1]
        Fraction of events (e.g. readmissions) the intervention prevents among flagged stays who would have had one.
    intervention_cost : float
        Cost of intervening on one flagged stay.
    event_cost : float
        Cost of one event (what an avoided event saves).

    Returns
    -------
    WhatIf
        ``events_avoided = effectiveness * events among flagged``; ``net_cost = flagged * intervention_cost -
        events_avoided * event_cost`` (negative: money saved); ``number_needed_to_treat = flagged / avoided``.

    Raises
    ------
    ValueError
        Bad predictions, a threshold outside [0, 1], effectiveness outside [0, 1] or a negative cost.
    """
    y, p = check_binary_input(y_true, y_prob)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
    if not 0.0 <= effectiveness <= 1.0:
        raise ValueError(f"effectiveness is a fraction of events prevented, in [0, 1]; got {effectiveness}.")
    if intervention_cost < 0 or event_cost < 0:
        raise ValueError(f"Costs must be >= 0; got intervention_cost={intervention_cost}, event_cost={event_cost}.")
    flagged = p >= threshold
    n_flagged = int(flagged.sum())
    events_flagged = int(np.sum(flagged & (y == 1)))
    avoided = effectiveness * events_flagged
    cost = n_flagged * intervention_cost
    savings = avoided * event_cost
    unit = f" {currency}" if currency else ""
    assumptions = (
        f"Every stay with predicted risk >= {threshold:.3f} receives the intervention "
        "(how many: the table above).",
        f"The intervention prevents {effectiveness:.0%} of the events it targets; it does nothing for stays "
        "without an event and the model's unflagged stays are not treated.",
        f"Intervention cost {intervention_cost:,.0f}{unit} per treated stay; each event costs {event_cost:,.0f}{unit}.",
        "Outcomes are those observed in the evaluated cohort; the cohort's event rate "
        f"({y.mean():.1%}) and the model's calibration are assumed to carry over to the target population.",
        "No discounting, capacity limits, harms of the intervention or downstream costs are modelled.",
    )
    return WhatIf(threshold=float(threshold), n=int(y.size), events=int(y.sum()), flagged=n_flagged,
                  events_flagged=events_flagged, events_avoided=float(avoided), intervention_cost=float(cost),
                  savings=float(savings), net_cost=float(cost - savings),
                  number_needed_to_treat=float(n_flagged / avoided) if avoided > 0 else float("inf"),
                  assumptions=assumptions)
