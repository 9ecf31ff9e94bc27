"""Physiologic plausibility ranges: values outside them are impossible (device errors, unit slips, placeholders).

The table is keyed by canonical variable name (the names the source readers emit; PhysioNet 2012 names are the
reference vocabulary). Bounds are inclusive and in the canonical unit given. Values outside a range are removed
from the events and counted in the row accounting as ``implausible value``; variables without an entry are kept.

The ranges are deliberately wide: they reject the impossible (a heart rate of 0 in a live patient record, a
temperature of 0 degC from an unconnected probe, a pH of 74 typed for 7.4), not the abnormal. They follow common
practice in ICU benchmark pipelines (e.g. the outlier ranges of the MIMIC-III benchmark of Harutyunyan et al.,
Sci Data 2019) rounded outward.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from healthfusion.data.accounting import RowAccounting

# variable: (low, high, unit)
PLAUSIBLE_RANGES: dict[str, tuple[float, float, str]] = {
    "HR": (1, 300, "bpm"),
    "RespRate": (1, 100, "breaths/min"),
    "Temp": (14, 47, "degC"),
    "SysABP": (1, 350, "mmHg"),
    "DiasABP": (1, 250, "mmHg"),
    "MAP": (1, 300, "mmHg"),
    "NISysABP": (1, 350, "mmHg"),
    "NIDiasABP": (1, 250, "mmHg"),
    "NIMAP": (1, 300, "mmHg"),
    "SaO2": (1, 100, "%"),
    "SpO2": (1, 100, "%"),
    "FiO2": (0.21, 1.0, "fraction"),
    "GCS": (3, 15, "score"),
    "pH": (6.3, 8.4, "pH"),
    "PaCO2": (5, 200, "mmHg"),
    "PaO2": (10, 800, "mmHg"),
    "HCO3": (2, 60, "mmol/L"),
    "Glucose": (5, 2500, "mg/dL"),
    "K": (1, 15, "mmol/L"),
    "Na": (90, 200, "mmol/L"),
    "Mg": (0.2, 15, "mg/dL"),
    "BUN": (0.5, 300, "mg/dL"),
    "Creatinine": (0.05, 40, "mg/dL"),
    "HCT": (5, 75, "%"),
    "WBC": (0, 500, "10^3/uL"),
    "Platelets": (1, 2500, "10^3/uL"),
    "Lactate": (0.1, 35, "mmol/L"),
    "Bilirubin": (0, 80, "mg/dL"),
    "Albumin": (0.5, 7, "g/dL"),
    "ALP": (1, 5000, "IU/L"),
    "ALT": (1, 15000, "IU/L"),
    "AST": (1, 25000, "IU/L"),
    "Cholesterol": (20, 1000, "mg/dL"),
    "TroponinI": (0, 500, "ng/mL"),
    "TroponinT": (0, 100, "ng/mL"),
    "Urine": (0, 5000, "mL per recording"),
    "Weight": (20, 350, "kg"),
    "Height": (100, 250, "cm"),
    "Age": (0, 120, "years"),
}


def plausible_values(variables: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``[E]`` bool: True where ``values[i]`` is present (not NaN) and within the range of ``variables[i]``
    (variables without a range only need a value). ``variables``: names (a 1-D array, a Series or a
    ``pd.Categorical``, whose codes are used as they are); ``values``: floats."""
    if isinstance(variables, pd.Categorical):
        codes, names = variables.codes, variables.categories
    else:
        codes, names = pd.factorize(variables)
    low = np.array([PLAUSIBLE_RANGES.get(str(v), (-np.inf, np.inf, ""))[0] for v in names] + [-np.inf])
    high = np.array([PLAUSIBLE_RANGES.get(str(v), (-np.inf, np.inf, ""))[1] for v in names] + [np.inf])
    value = np.asarray(values, dtype=float)
    return ~np.isnan(value) & (value >= low[codes]) & (value <= high[codes])


def plausible_mask(events: pd.DataFrame) -> pd.Series:
    """Boolean Series over ``events`` rows: :func:`plausible_values` of its ``variable`` and ``value`` columns."""
    return pd.Series(plausible_values(events["variable"], events["value"].to_numpy(dtype=float)),
                     index=events.index)


def drop_implausible(events: pd.DataFrame, accounting: RowAccounting, table: str) -> pd.DataFrame:
    """Remove events whose value is missing or outside :data:`PLAUSIBLE_RANGES`; count them under ``table``."""
    ok = plausible_mask(events)
    missing = events["value"].isna()
    accounting.drop(table, "missing value", int(missing.sum()))
    accounting.drop(table, "implausible value", int((~ok & ~missing).sum()))
    return events[ok].reset_index(drop=True)
