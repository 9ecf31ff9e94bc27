"""Calibration of a federated global model by federated averaging of a temperature.

Like every healthfusion model, the federated global model is calibrated before it is saved; no site shares its
stays, so the calibrator is fitted federatedly. Each site fits temperature scaling (``sigmoid(logit(p) / T)``,
:class:`~healthfusion.models.calibration.Calibrator`) on its own validation stays and sends only ``(T, n_val)``;
the server's temperature is the validation-size-weighted geometric mean ``exp(sum n log T / sum n)``
(:func:`average_temperature`, FedAvg of ``log T``). Temperature keeps each probability's side of 0.5 and the
ranking, so accuracy at 0.5 and AUROC are those of the uncalibrated network; only the probabilities move.

A site without validation stays, or whose validation stays hold a single outcome, sends nothing (it is named in
the result); with no temperature from any site the model stays uncalibrated.

Example::

    calibrator, per_site = calibrate_federated(model, sites)
    calibrator.to_dict()   # {"method": "temperature", "params": {"temperature": 1.31}, ...} or None
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from torch import nn

from healthfusion.features import batch as B
from healthfusion.federated.client import Site
from healthfusion.models.calibration import Calibrator

log = logging.getLogger(__name__)


def average_temperature(temperatures: Sequence[float], counts: Sequence[int]) -> float:
    """``exp(sum n_i log T_i / sum n_i)``: the sample-weighted mean of the sites' log temperatures.

    Raises
    ------
    ValueError
        Empty or mismatched inputs, a temperature <= 0, or counts that are negative or sum to 0.
    """
    t = np.asarray(temperatures, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    if t.size == 0 or t.shape != n.shape:
        raise ValueError(f"Need one count per temperature; got {t.size} temperature(s) and {n.size} count(s).")
    if (t <= 0).any() or not np.isfinite(t).all():
        raise ValueError(f"Temperatures must be positive and finite; got {t.tolist()}.")
    if (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"Counts must be >= 0 with a positive sum; got {n.tolist()}.")
    return float(np.exp(np.sum(n * np.log(t)) / n.sum()))


def site_temperature(model: nn.Module, site: Site, head_kind: str = "binary") -> tuple[float, int] | None:
    """``(T, n)`` fitted on ``site``'s validation stays (what the site sends), or None when it has none or they
    hold a single outcome."""
    if site.val is None:
        return None
    y = site.val[B.TARGET].astype(np.float64)
    keep = ~np.isnan(y)
    if keep.sum() == 0 or y[keep].min() == y[keep].max():
        return None
    p = site.predict(model, "val", head_kind)
    cal = Calibrator("temperature").fit(y[keep], p[keep])
    return float(cal.params_["temperature"]), int(keep.sum())


def calibrate_federated(model: nn.Module, sites: Sequence[Site],
                        head_kind: str = "binary") -> tuple[Calibrator | None, dict[str, dict]]:
    """Fit the federated temperature of ``model`` over ``sites``.

    Returns
    -------
    (calibrator, per_site)
        A fitted temperature :class:`Calibrator` (its ``info`` names the rule and each site's temperature) or None
        when no site could fit one; ``per_site`` maps site name -> ``{"temperature", "n_val"}`` (None values for a
        site that sent nothing).
    """
    per_site: dict[str, dict] = {}
    for site in sites:
        fit = site_temperature(model, site, head_kind)
        per_site[site.name] = {"temperature": None if fit is None else fit[0], "n_val": 0 if fit is None else fit[1]}
    fitted = {k: v for k, v in per_site.items() if v["temperature"] is not None}
    if not fitted:
        log.warning("No site has validation stays with both outcomes; the federated model is not calibrated.")
        return None, per_site
    skipped = sorted(set(per_site) - set(fitted))
    if skipped:
        log.warning("Sites %s sent no temperature (no validation stays or a single outcome).", skipped)
    temperature = average_temperature([v["temperature"] for v in fitted.values()],
                                      [v["n_val"] for v in fitted.values()])
    calibrator = Calibrator.from_dict({
        "method": "temperature", "params": {"temperature": temperature},
        "n_fit": int(sum(v["n_val"] for v in fitted.values())),
        "info": {"federated": "validation-size-weighted geometric mean of the sites' temperatures",
                 "sites": {k: v["temperature"] for k, v in fitted.items()}}})
    return calibrator, per_site
