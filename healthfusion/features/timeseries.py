"""Irregular time series -> a regular grid of values, an observation mask and the time since last observation.

Events are read through :meth:`Cohort.observable`, the leakage guard, so nothing after a stay's prediction time is
used. The grid covers the ``hours`` before the prediction time in bins of ``step`` hours (hourly by default); several
observations in one bin are averaged; empty bins carry the last observation forward (LOCF), and bins before a
variable's first observation take the training mean (0 after standardisation). Impossible values (outside
:data:`healthfusion.data.plausibility.PLAUSIBLE_RANGES`) are removed and counted in ``drop_counts_``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.plausibility import plausible_mask, plausible_values
from healthfusion.features.base import FeatureTransformer, positions

log = logging.getLogger(__name__)

GRID_CHUNK_STAYS = 2048  # stays gridded at a time: float64 scratch stays ~30 MB per array at 48 steps x 40 vars


class TimeSeriesTransformer(FeatureTransformer):
    """Grid, impute and standardise the ``events`` table.

    Parameters
    ----------
    variables : sequence of str, optional
        Variables to keep (in this order). Default: every variable seen in the training events at least
        ``min_count`` times.
    hours : float, default 48
        Length of the observation window ending at the prediction time.
    step : float, default 1.0
        Bin width in hours.
    min_count : int, default 10
        Minimum number of training observations for a variable to be kept when ``variables`` is None.

    Attributes
    ----------
    variables_ : list of str
    mean_, std_ : list of float
        Per-variable mean and standard deviation of plausible training observations.
    drop_counts_ : dict
        Events removed by the last ``transform``: ``{"implausible value": n, "unknown variable": n, ...}``.

    Output of :meth:`transform`: ``values``, ``mask``, ``delta`` arrays ``[N, T, V]`` float32 (delta in units of
    ``hours``, i.e. 1.0 = a whole window) and ``lengths`` ``[N]``.
    """

    _fitted = ("variables_", "mean_", "std_")

    def __init__(self, variables: Sequence[str] | None = None, hours: float = 48.0, step: float = 1.0,
                 min_count: int = 10):
        self.variables = variables
        self.hours = hours
        self.step = step
        self.min_count = min_count

    @property
    def n_steps(self) -> int:
        return int(np.ceil(self.hours / self.step))

    def _events(self, cohort: Cohort, stay_ids) -> pd.DataFrame:
        events = cohort.observable("events", stay_ids)
        pred = cohort.stays.set_index("stay_id")["prediction_time"]
        start = events["stay_id"].map(pred).to_numpy() - self.hours
        in_window = events["time"].to_numpy() >= start
        self._last_counts = {"before window": int((~in_window).sum())}
        events = events[in_window]
        ok = plausible_mask(events).to_numpy()
        self._last_counts["implausible value"] = int((~ok).sum())
        return events[ok]

    def fit(self, cohort: Cohort, stay_ids: Sequence[str]) -> TimeSeriesTransformer:
        """Learn variables and their mean/std from the training stays ``stay_ids`` only."""
        if self.hours <= 0 or self.step <= 0 or self.step > self.hours:
            raise ValueError(f"Need 0 < step <= hours; got step={self.step}, hours={self.hours}.")
        events = self._events(cohort, stay_ids)
        stats = events.groupby("variable", observed=True)["value"].agg(["count", "mean", "std"])
        if self.variables is not None:
            missing = [v for v in self.variables if v not in stats.index]
            if missing:
                log.warning("Variables %s never observed in the training stays; they stay all-missing.", missing)
            stats = stats.reindex(list(self.variables))
        else:
            stats = stats[stats["count"] >= self.min_count].sort_index()
        if len(stats) == 0:
            raise ValueError("No time-series variable has enough training observations; check the events table.")
        self.variables_ = [str(v) for v in stats.index]
        self.mean_ = stats["mean"].fillna(0.0).astype(float).tolist()
        self.std_ = stats["std"].fillna(1.0).replace(0.0, 1.0).astype(float).tolist()
        return self

    def transform(self, cohort: Cohort, stay_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Grid the observable events of ``stay_ids`` (in that order). Stays with no events get all-zero masks."""
        self._check_fitted()
        stay_ids = [str(s) for s in stay_ids]
        events = cohort.observable("events", stay_ids)
        pred = cohort.stays.set_index("stay_id")["prediction_time"].reindex(stay_ids).to_numpy(dtype=float)
        return self.transform_arrays(pd.Index(stay_ids).get_indexer(events["stay_id"]),
                                     events["time"].to_numpy(dtype=float), events["variable"],
                                     events["value"].to_numpy(dtype=float), pred)

    def transform_arrays(self, stay: np.ndarray, time: np.ndarray, variable, value: np.ndarray,
                         prediction_time: np.ndarray) -> dict[str, np.ndarray]:
        """Grid events given as flat arrays: what :meth:`transform` does after reading the cohort, and what the
        scoring service calls on a request's events (so both give the same arrays).

        Parameters
        ----------
        stay : [E] int
            Row of each event's stay (0..n-1).
        time, value : [E] float
            Hours since admission; the value in the variable's canonical unit.
        variable : [E] names (array or Series)
        prediction_time : [n] float
            Of each stay, hours since admission. Events after it are not used (the leakage guard of
            :meth:`Cohort.observable`, applied again here for arrays that did not come through it).
        """
        self._check_fitted()
        n = len(prediction_time)
        at = np.asarray(prediction_time, dtype=float)[stay]
        observable = time <= at
        in_window = observable & (time >= at - self.hours)
        plausible = in_window & plausible_values(variable, value)
        v = positions(self.variables_, variable)
        keep = plausible & (v >= 0)
        self.drop_counts_ = {"before window": int((observable & ~in_window).sum()),
                             "implausible value": int((in_window & ~plausible).sum()),
                             "unknown variable": int((plausible & ~keep).sum())}
        s, v = np.asarray(stay)[keep], v[keep]
        t_steps, n_var = self.n_steps, len(self.variables_)
        rel = time[keep] - (at[keep] - self.hours)
        t = np.clip(np.floor(rel / self.step).astype(np.int64), 0, t_steps - 1)
        z = (value[keep] - np.asarray(self.mean_)[v]) / np.asarray(self.std_)[v]
        out = {"values": np.empty((n, t_steps, n_var), np.float32), "mask": np.empty((n, t_steps, n_var), np.float32),
               "delta": np.empty((n, t_steps, n_var), np.float32)}
        order = np.argsort(s, kind="stable")  # events grouped by stay, so each chunk of stays is one slice
        s, t, v, z = s[order], t[order], v[order], z[order]
        cuts = np.searchsorted(s, np.arange(0, n + GRID_CHUNK_STAYS, GRID_CHUNK_STAYS))
        for i, lo in enumerate(range(0, n, GRID_CHUNK_STAYS)):
            hi = min(lo + GRID_CHUNK_STAYS, n)
            rows = slice(cuts[i], cuts[i + 1])
            chunk = self._grid(s[rows] - lo, t[rows], v[rows], z[rows], hi - lo)
            for name, array in chunk.items():
                out[name][lo:hi] = array
        out["lengths"] = np.full(n, t_steps, dtype=np.int64)
        return out

    def _grid(self, s: np.ndarray, t: np.ndarray, v: np.ndarray, z: np.ndarray, n: int) -> dict[str, np.ndarray]:
        """Values (bin means, carried forward), mask and scaled time since last observation of ``n`` stays, from
        their events' stay, step and variable indices and standardised values (float64 sums, float32 out)."""
        t_steps, n_var = self.n_steps, len(self.variables_)
        flat = (s * t_steps + t) * n_var + v
        size = n * t_steps * n_var
        sums = np.bincount(flat, weights=z, minlength=size)
        counts = np.bincount(flat, minlength=size)
        mask = (counts > 0).reshape(n, t_steps, n_var)
        values = np.divide(sums, counts, out=np.zeros(size), where=counts > 0).reshape(n, t_steps, n_var)
        del sums, counts
        # last observation carried forward, and time since it
        steps = np.arange(t_steps, dtype=np.int32)[None, :, None]
        last = np.maximum.accumulate(np.where(mask, steps, np.int32(-1)), axis=1)
        seen = last >= 0
        filled = np.take_along_axis(values, np.maximum(last, 0), axis=1)
        return {
            "values": np.where(seen, filled, 0.0).astype(np.float32),
            "mask": mask.astype(np.float32),
            "delta": (np.where(seen, steps - last, steps + 1) * self.step / self.hours).astype(np.float32),
        }
