"""Source vocabularies -> canonical names: MIMIC-IV itemids, eICU lab names and vital columns, demographic
groups.

Canonical variable names are those of :mod:`healthfusion.data.plausibility` (PhysioNet 2012 style: ``HR``,
``SysABP``, ``NISysABP``, ``Temp`` ...), in the canonical units given there. A source value becomes canonical
as ``value * factor + offset`` (e.g. Fahrenheit: factor 5/9, offset -160/9).

:data:`MIMIC4_ITEMS` is the MIMIC-IV table. Every itemid, label and unit below was checked against
``icu/d_items`` and ``hosp/d_labitems`` of the MIMIC-IV Clinical Database Demo v2.2 (a test re-checks it
whenever the demo is available). Design choices:

* Laboratory values come from ``hosp/labevents`` only. The "Labs" items of ``icu/chartevents`` (220615
  Creatinine (serum), 227442 Potassium (serum), ...) are nurse-transcribed copies of the same results and
  would double-count them; they are deliberately unmapped. Point-of-care finger-stick glucose (225664), which
  is not in labevents, is mapped.
* Blood-gas items (50820 pH, 50821 pO2, 50818 pCO2, 50817 O2 saturation) are mapped to the arterial names (pH,
  PaO2, PaCO2, SaO2) although labevents does not say on the same row whether the sample was arterial or venous
  (that is a separate "Specimen Type" row, itemid 52033). Venous gases therefore appear as arterial ones.
* MIMIC-IV charts no total Glasgow Coma Scale, only its components (``GCSEye``, ``GCSVerbal``, ``GCSMotor``);
  the MIMIC-IV reader derives ``GCS`` as their sum where all three are charted at the same time.
* Inspired O2 fraction (223835) is charted in percent and converted to a fraction (factor 0.01); entries
  already typed as a fraction end up below 0.21 and are dropped as implausible.

Example::

    from healthfusion.data.sources.itemmap import mimic4_items
    labs = mimic4_items("labevents")   # indexed by itemid: variable, label, source_unit, factor, offset
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

F_TO_C = (5 / 9, -160 / 9)  # degC = (degF - 32) * 5/9
LB_TO_KG = 0.45359237
INCH_TO_CM = 2.54


@dataclass(frozen=True)
class ItemMapping:
    """One source item: ``table`` (chartevents, labevents or outputevents), ``itemid``, its label in the
    source dictionary, the canonical ``variable`` and the conversion from ``source_unit`` (canonical = value *
    factor + offset)."""

    table: str
    itemid: int
    label: str
    variable: str
    source_unit: str
    factor: float = 1.0
    offset: float = 0.0


def _items(table: str, rows: list[tuple]) -> list[ItemMapping]:
    return [ItemMapping(table, *row) for row in rows]


MIMIC4_ITEMS: tuple[ItemMapping, ...] = tuple(
    _items("chartevents", [
        (220045, "Heart Rate", "HR", "bpm"),
        (220050, "Arterial Blood Pressure systolic", "SysABP", "mmHg"),
        (220051, "Arterial Blood Pressure diastolic", "DiasABP", "mmHg"),
        (220052, "Arterial Blood Pressure mean", "MAP", "mmHg"),
        (225309, "ART BP Systolic", "SysABP", "mmHg"),
        (225310, "ART BP Diastolic", "DiasABP", "mmHg"),
        (225312, "ART BP Mean", "MAP", "mmHg"),
        (220179, "Non Invasive Blood Pressure systolic", "NISysABP", "mmHg"),
        (220180, "Non Invasive Blood Pressure diastolic", "NIDiasABP", "mmHg"),
        (220181, "Non Invasive Blood Pressure mean", "NIMAP", "mmHg"),
        (220210, "Respiratory Rate", "RespRate", "insp/min"),
        (224690, "Respiratory Rate (Total)", "RespRate", "insp/min"),
        (220277, "O2 saturation pulseoxymetry", "SpO2", "%"),
        (223761, "Temperature Fahrenheit", "Temp", "degF", *F_TO_C),
        (223762, "Temperature Celsius", "Temp", "degC"),
        (220739, "GCS - Eye Opening", "GCSEye", "score"),
        (223900, "GCS - Verbal Response", "GCSVerbal", "score"),
        (223901, "GCS - Motor Response", "GCSMotor", "score"),
        (225664, "Glucose finger stick (range 70-100)", "Glucose", "mg/dL"),
        (223835, "Inspired O2 Fraction", "FiO2", "%", 0.01),
        (226512, "Admission Weight (Kg)", "Weight", "kg"),
        (224639, "Daily Weight", "Weight", "kg"),
        (226531, "Admission Weight (lbs.)", "Weight", "lb", LB_TO_KG),
        (226730, "Height (cm)", "Height", "cm"),
        (226707, "Height", "Height", "inch", INCH_TO_CM),
    ])
    + _items("labevents", [
        (50931, "Glucose", "Glucose", "mg/dL"),
        (50809, "Glucose", "Glucose", "mg/dL"),  # blood gas
        (52569, "Glucose", "Glucose", "mg/dL"),
        (52027, "Glucose, Whole Blood", "Glucose", "mg/dL"),
        (50971, "Potassium", "K", "mEq/L"),
        (50822, "Potassium, Whole Blood", "K", "mEq/L"),
        (50983, "Sodium", "Na", "mEq/L"),
        (50824, "Sodium, Whole Blood", "Na", "mEq/L"),
        (52623, "Sodium", "Na", "mEq/L"),
        (50912, "Creatinine", "Creatinine", "mg/dL"),
        (52546, "Creatinine", "Creatinine", "mg/dL"),
        (51006, "Urea Nitrogen", "BUN", "mg/dL"),
        (52647, "Urea Nitrogen", "BUN", "mg/dL"),
        (51221, "Hematocrit", "HCT", "%"),
        (50810, "Hematocrit, Calculated", "HCT", "%"),
        (51638, "Hematocrit", "HCT", "%"),
        (51301, "White Blood Cells", "WBC", "K/uL"),
        (51300, "WBC Count", "WBC", "K/uL"),
        (51265, "Platelet Count", "Platelets", "K/uL"),
        (50813, "Lactate", "Lactate", "mmol/L"),
        (53154, "Lactate", "Lactate", "mmol/L"),
        (50820, "pH", "pH", "units"),
        (50821, "pO2", "PaO2", "mm Hg"),
        (50818, "pCO2", "PaCO2", "mm Hg"),
        (50817, "Oxygen Saturation", "SaO2", "%"),
        (50882, "Bicarbonate", "HCO3", "mEq/L"),
        (50803, "Calculated Bicarbonate, Whole Blood", "HCO3", "mEq/L"),
        (50960, "Magnesium", "Mg", "mg/dL"),
        (50885, "Bilirubin, Total", "Bilirubin", "mg/dL"),
        (50862, "Albumin", "Albumin", "g/dL"),
        (53085, "Albumin", "Albumin", "g/dL"),
        (50863, "Alkaline Phosphatase", "ALP", "IU/L"),
        (50861, "Alanine Aminotransferase (ALT)", "ALT", "IU/L"),
        (50878, "Asparate Aminotransferase (AST)", "AST", "IU/L"),
        (50907, "Cholesterol, Total", "Cholesterol", "mg/dL"),
        (51002, "Troponin I", "TroponinI", "ng/mL"),
        (51003, "Troponin T", "TroponinT", "ng/mL"),
    ])
    + _items("outputevents", [
        (226559, "Foley", "Urine", "mL"),
        (226560, "Void", "Urine", "mL"),
        (226561, "Condom Cath", "Urine", "mL"),
        (226584, "Ileoconduit", "Urine", "mL"),
        (226563, "Suprapubic", "Urine", "mL"),
        (226564, "R Nephrostomy", "Urine", "mL"),
        (226565, "L Nephrostomy", "Urine", "mL"),
        (226567, "Straight Cath", "Urine", "mL"),
        (226557, "R Ureteral Stent", "Urine", "mL"),
        (226558, "L Ureteral Stent", "Urine", "mL"),
    ])
)

GCS_COMPONENTS = ("GCSEye", "GCSVerbal", "GCSMotor")


def mimic4_items(table: str | None = None) -> pd.DataFrame:
    """The MIMIC-IV mapping as a DataFrame indexed by ``itemid`` (only ``table``'s items when given).

    Columns: table, label, variable, source_unit, factor, offset.

    Raises
    ------
    ValueError
        If ``table`` is not one of the mapped tables.
    """
    df = pd.DataFrame([asdict(m) for m in MIMIC4_ITEMS])
    if table is not None:
        known = sorted(df["table"].unique())
        if table not in known:
            raise ValueError(f"No MIMIC-IV item mapping for table {table!r}; mapped tables are {known}.")
        df = df[df["table"] == table]
    return df.set_index("itemid")


# ------------------------------------------------------------------------------------------------------- eICU
# eICU ``lab.labname`` -> (variable, factor). Names as in the eICU-CRD lab table, with its unit
# (labmeasurenamesystem) in the comments; values are taken from ``labresult`` (numeric).
EICU_LABS: dict[str, tuple[str, float]] = {
    "glucose": ("Glucose", 1.0),  # mg/dL
    "bedside glucose": ("Glucose", 1.0),  # mg/dL
    "potassium": ("K", 1.0),  # mmol/L
    "sodium": ("Na", 1.0),  # mmol/L
    "creatinine": ("Creatinine", 1.0),  # mg/dL
    "BUN": ("BUN", 1.0),  # mg/dL
    "Hct": ("HCT", 1.0),  # %
    "WBC x 1000": ("WBC", 1.0),  # K/mcL
    "platelets x 1000": ("Platelets", 1.0),  # K/mcL
    "lactate": ("Lactate", 1.0),  # mmol/L
    "pH": ("pH", 1.0),
    "paO2": ("PaO2", 1.0),  # mm Hg
    "paCO2": ("PaCO2", 1.0),  # mm Hg
    "O2 Sat (%)": ("SaO2", 1.0),  # %
    "FiO2": ("FiO2", 0.01),  # % -> fraction
    "HCO3": ("HCO3", 1.0),  # mmol/L
    "bicarbonate": ("HCO3", 1.0),  # mmol/L
    "magnesium": ("Mg", 1.0),  # mg/dL
    "total bilirubin": ("Bilirubin", 1.0),  # mg/dL
    "albumin": ("Albumin", 1.0),  # g/dL
    "alkaline phos.": ("ALP", 1.0),  # Units/L
    "ALT (SGPT)": ("ALT", 1.0),  # Units/L
    "AST (SGOT)": ("AST", 1.0),  # Units/L
    "total cholesterol": ("Cholesterol", 1.0),  # mg/dL
    "troponin - I": ("TroponinI", 1.0),  # ng/mL
    "troponin - T": ("TroponinT", 1.0),  # ng/mL
}

# eICU wide vital-sign tables: column -> variable (all already in canonical units; vitalPeriodic.temperature
# is charted in degC, the occasional degF entry is dropped as implausible).
EICU_VITAL_PERIODIC: dict[str, str] = {
    "heartrate": "HR",
    "respiration": "RespRate",
    "sao2": "SpO2",  # pulse oximetry despite the column name
    "temperature": "Temp",
    "systemicsystolic": "SysABP",
    "systemicdiastolic": "DiasABP",
    "systemicmean": "MAP",
}
EICU_VITAL_APERIODIC: dict[str, str] = {
    "noninvasivesystolic": "NISysABP",
    "noninvasivediastolic": "NIDiasABP",
    "noninvasivemean": "NIMAP",
}

# eICU ``intakeOutput`` cells -> variable: (cellpath regex, celllabel regex that must match, celllabel regex
# that must not, variable), first match wins. Urine covers every urinary output cell of the "Output (ml)"
# section (Foley, voided, catheter, nephrostomy), not counts of occurrences or mixed urine/stool; weight is
# the kg cell.
EICU_INTAKE_OUTPUT: tuple[tuple[str, str, str, str], ...] = (
    (r"\|I&O\|Output \(ml\)\|", r"(?i)urin|foley|void|urethral|indwelling catheter|nephrostomy|condom",
     r"(?i)count|occurrence|stool|mixed", "Urine"),
    (r"\|I&O\|Weight\|Bodyweight \(kg\)$", r".", r"^$", "Weight"),
)


# ----------------------------------------------------------------------------------------------- demographics
# Domain values follow the PhysioNet 2012 reader, so cohorts of different sources share one vocabulary:
# sex F/M, age groups <40, 40-59, 60-79, 80+, and "Unknown" wherever a value is missing or unrecognised.
UNKNOWN = "Unknown"
AGE_EDGES = (40, 60, 80)
AGE_GROUPS = ("<40", "40-59", "60-79", "80+")


def age_group(age: pd.Series) -> pd.Series:
    """Age in years -> ``"<40"``, ``"40-59"``, ``"60-79"``, ``"80+"`` (``"Unknown"`` where missing)."""
    codes = np.searchsorted(np.asarray(AGE_EDGES, dtype=float), age.to_numpy(dtype=float), side="right")
    groups = np.asarray(AGE_GROUPS, dtype=object)[np.minimum(codes, len(AGE_GROUPS) - 1)]
    out = pd.Series(groups, index=age.index)
    return out.where(age.notna(), UNKNOWN)


_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


def sex_group(values: pd.Series) -> pd.Series:
    """``M``/``F``/``Male``/``Female`` (any case) -> ``"M"``/``"F"``; anything else -> ``"Unknown"``."""
    return values.astype(object).str.strip().str.lower().map(_SEX).fillna(UNKNOWN).astype(object)


# Ethnicity groups shared by the sources, so fairness tables compare like with like across databases. eICU's
# "Other/Unknown" category conflates the two and is mapped to "Unknown"; MIMIC-IV's "OTHER" is "Other".
ETHNICITY_GROUPS = ("White", "Black", "Hispanic", "Asian", "Other", UNKNOWN)
_ETHNICITY_PREFIXES = (
    ("WHITE", "White"), ("PORTUGUESE", "White"), ("CAUCASIAN", "White"),
    ("BLACK", "Black"), ("AFRICAN AMERICAN", "Black"),
    ("HISPANIC", "Hispanic"), ("SOUTH AMERICAN", "Hispanic"),
    ("ASIAN", "Asian"),
    ("AMERICAN INDIAN", "Other"), ("NATIVE", "Other"), ("MULTIPLE RACE", "Other"), ("OTHER/UNKNOWN", UNKNOWN),
    ("OTHER", "Other"),
)


def ethnicity_group(values: pd.Series) -> pd.Series:
    """Free-text race/ethnicity (MIMIC-IV ``admissions.race``, eICU ``patient.ethnicity``) -> one of
    :data:`ETHNICITY_GROUPS`; unknown, declined and missing values become ``"Unknown"``."""
    upper = values.astype(object).fillna("").astype(str).str.strip().str.upper()
    out = pd.Series(UNKNOWN, index=values.index, dtype=object)
    assigned = pd.Series(False, index=values.index)
    for prefix, group in _ETHNICITY_PREFIXES:
        hit = upper.str.startswith(prefix) & ~assigned
        out[hit] = group
        assigned |= hit
    return out
