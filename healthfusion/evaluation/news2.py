"""A NEWS2-style early-warning score from the vitals an ICU time series has (the clinical baseline of the alert
evaluation, :mod:`healthfusion.evaluation.alerts`).

NEWS2 (Royal College of Physicians, 2017) adds points per parameter. Bands used here (SpO2 scale 1)::

    respiratory rate /min   <=8: 3   9-11: 1   12-20: 0   21-24: 2   >=25: 3
    SpO2 %                  <=91: 3  92-93: 2  94-95: 1   >=96: 0
    supplemental oxygen     FiO2 > 0.21 (or > 21 %): 2, else 0
    systolic pressure mmHg  <=90: 3  91-100: 2 101-110: 1 111-219: 0 >=220: 3
    heart rate /min         <=40: 3  41-50: 1  51-90: 0   91-110: 1 111-130: 2 >=131: 3
    consciousness           GCS < 15 (stands in for new confusion / V / P / U): 3, else 0
    temperature °C          <=35.0: 3 35.1-36.0: 1 36.1-38.0: 0 38.1-39.0: 1 >=39.1: 2

A parameter that was never measured scores 0 (so the score is a lower bound; the count of measured parameters is
returned alongside). The PhysioNet 2012 names are the defaults of :data:`PHYSIONET_VITALS`.

Example::

    points = news2(pd.DataFrame({"RespRate": [26], "SaO2": [93], "SysABP": [95], "HR": [120], "GCS": [15],
                                 "Temp": [38.5]}))
    points["news2"]  # 3 + 2 + 2 + 2 + 0 + 1 = 10
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: NEWS2 parameter -> the PhysioNet 2012 variables that measure it, in order of preference.
PHYSIONET_VITALS: dict[str, tuple[str, ...]] = {
    "resp_rate": ("RespRate",),
    "spo2": ("SaO2",),
    "fio2": ("FiO2",),
    "systolic": ("SysABP", "NISysABP"),
    "heart_rate": ("HR",),
    "gcs": ("GCS",),
    "temperature": ("Temp",),
}


def _bands(x: np.ndarray, edges: list[float], points: list[int]) -> np.ndarray:
    """Points of ``x`` for bands ``(-inf, e0], (e0, e1], ...`` (``len(points) == len(edges) + 1``); NaN -> 0."""
    out = np.asarray(points)[np.searchsorted(np.asarray(edges), x, side="left")].astype(float)
    return np.where(np.isnan(x), 0.0, out)


def news2(values: pd.DataFrame, vitals: dict[str, tuple[str, ...]] = PHYSIONET_VITALS) -> pd.DataFrame:
    """NEWS2 points per row of ``values`` (one column per variable, NaN = not measured).

    Returns a frame with one column of points per parameter, ``news2`` (their sum) and ``n_measured``.

    Raises
    ------
    ValueError
        ``values`` has none of the variables named in ``vitals``.
    """
    def column(parameter: str) -> np.ndarray:
        out = np.full(len(values), np.nan)
        for name in reversed(vitals[parameter]):  # the first name wins where several are measured
            if name in values.columns:
                v = pd.to_numeric(values[name], errors="coerce").to_numpy(dtype=float)
                out = np.where(np.isnan(v), out, v)
        return out

    known = [n for names in vitals.values() for n in names]
    if not any(n in values.columns for n in known):
        raise ValueError(f"No NEWS2 vital among the columns {list(values.columns)[:10]}; expected some of {known}.")
    rr, spo2, fio2 = column("resp_rate"), column("spo2"), column("fio2")
    sbp, hr, gcs, temp = column("systolic"), column("heart_rate"), column("gcs"), column("temperature")
    fio2_fraction = np.where(fio2 > 1.0, fio2 / 100.0, fio2)
    points = pd.DataFrame({
        "resp_rate": _bands(rr, [8, 11, 20, 24], [3, 1, 0, 2, 3]),
        "spo2": _bands(spo2, [91, 93, 95], [3, 2, 1, 0]),
        "oxygen": np.where(fio2_fraction > 0.21, 2.0, 0.0),
        "systolic": _bands(sbp, [90, 100, 110, 219], [3, 2, 1, 0, 3]),
        "heart_rate": _bands(hr, [40, 50, 90, 110, 130], [3, 1, 0, 1, 2, 3]),
        "consciousness": np.where(gcs < 15, 3.0, 0.0),
        "temperature": _bands(temp, [35.0, 36.0, 38.0, 39.0], [3, 1, 0, 1, 2]),
    }, index=values.index)
    points["news2"] = points.sum(axis=1)
    points["n_measured"] = sum((~np.isnan(c)).astype(int) for c in (rr, spo2, sbp, hr, gcs, temp))
    return points


def latest_values(events: pd.DataFrame, times: pd.DataFrame, variables: list[str]) -> pd.DataFrame:
    """For each row of ``times`` (``stay_id``, ``time``), the latest value of each of ``variables`` observed at or
    before that time (NaN if none): the vitals a ward would see at that hour. ``events``: ``stay_id``, ``time``,
    ``variable``, ``value``. Returns ``times`` with one column per variable, in the order of ``times``."""
    out = times.reset_index(drop=True).copy()
    order = out.sort_values("time", kind="stable").index
    left = out.loc[order, ["stay_id", "time"]].assign(_row=order)
    for var in variables:
        obs = events.loc[events["variable"] == var, ["stay_id", "time", "value"]].sort_values("time")
        merged = pd.merge_asof(left, obs, on="time", by="stay_id", direction="backward")
        out[var] = pd.Series(merged["value"].to_numpy(), index=merged["_row"].to_numpy()).reindex(out.index)
    return out
