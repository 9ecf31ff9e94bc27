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
from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from healthfusion.features import batch as B
from healthfusion.features.dataset import ArrayDataset
from healthfusion.federated.client import Site
from healthfusion.models.calibration import Calibrator
from healthfusion.training import Trainer, TrainerConfig

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


def fit_temperature(model: nn.Module, data: ArrayDataset | None, head_kind: str = "binary") -> Calibrator | None:
    """Temperature scaling of ``model`` fitted on ``data`` (validation stays with a ``"target"`` array; NaN targets
    are left out), or None when there is no data or it holds a single outcome. What a site fits on its own
    validation stays, and what the pooled and local-only reference models of ``federate`` are calibrated with."""
    if data is None:
        return None
    y = data[B.TARGET].astype(np.float64)
    keep = ~np.isnan(y)
    if keep.sum() == 0 or y[keep].min() == y[keep].max():
        return None
    p = Trainer(TrainerConfig(progress=False)).predict(model, data, head_kind=head_kind)
    return Calibrator("temperature").fit(y[keep], p[keep])


def site_temperature(model: nn.Module, site: Site, head_kind: str = "binary") -> tuple[float, int] | None:
    """``(T, n)`` fitted on ``site``'s validation stays (what the site sends), or None when it has none or they
    hold a single outcome."""
    cal = fit_temperature(model, site.val, head_kind)
    if cal is None:
        return None
    return float(cal.params_["temperature"]), int(cal.n_fit_)


def calibrate_federated(model: nn.Module, sites: Sequence[Site],
                        head_kind: str = "binary") -> tuple[Calibrator | None, dict[str, dict]]:
    """Fit the federated temperature of ``model`` over in-process ``sites`` (each fits its own, then
    :func:`combine_temperatures`).

    Returns
    -------
    (calibrator, per_site)
        As :func:`combine_temperatures`.
    """
    return combine_temperatures({site.name: site_temperature(model, site, head_kind) for site in sites})


def combine_temperatures(sent: Mapping[str, tuple[float, int] | None]) -> tuple[Calibrator | None, dict[str, dict]]:
    """The server's side: the federated temperature from what each site sent, ``site name -> (T, n_val)`` or None
    (the site had no usable validation stays). The in-process simulation and the Flower server (the sites send
    ``(T, n_val)`` with their last evaluation) both end here, so they calibrate identically.

    Returns
    -------
    (calibrator, per_site)
        A fitted temperature :class:`Calibrator` (its ``info`` names the rule and each site's temperature) or None
        when no site sent one; ``per_site`` maps site name -> ``{"temperature", "n_val"}`` (None and 0 for a site
        that sent nothing).
    """
    per_site = {name: {"temperature": None if fit is None else float(fit[0]), "n_val": 0 if fit is None else int(fit[1])}
                for name, fit in sent.items()}
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
