"""eICU Collaborative Research Database (v2.0 or its demo) -> :class:`~healthfusion.data.cohort.Cohort`, one
row per ICU unit stay.

``path`` is the folder holding the eICU tables (``patient.csv.gz``, ``hospital.csv.gz``, ...; ``.csv`` and
``.parquet`` are accepted too). eICU times are minute offsets from unit admission; the cohort stores hours.

What the cohort holds
---------------------
``stays``   one row per unit stay (``patientunitstayid``), ``patient_id`` = ``uniquepid``, ``prediction_time``
            = ``prediction_hours``; domains ``site`` (``hospitalid``), ``region`` (``hospital.region``),
            ``care_unit`` (``unittype``), ``sex`` (F/M), ``age_group`` and ``ethnicity`` (grouped as in
            :mod:`~healthfusion.data.sources.itemmap`); unknown values are ``"Unknown"``.
``static``  ``Age`` (``"> 89"`` becomes 90), ``Gender``, ``care_unit``, ``unit_admit_source``, ``Height`` (cm)
            and ``Weight`` (kg) at admission; ages, heights and weights outside the plausible ranges are left
            empty. With ``apache_features=True`` also the APACHE physiology of the first day
            (``apacheApsVar``, prefixed ``aps_``; -1 is missing); it summarises the first 24 h, so it is
            refused for prediction times under 24 h.
``events``  ``vitalAperiodic`` (non-invasive blood pressure), ``vitalPeriodic`` (HR, RespRate, SpO2, Temp,
            arterial pressures) and ``lab`` **when present** (the demo has neither), and ``intakeOutput``
            (urine output per recording, body weight). Canonical names and units per
            :mod:`~healthfusion.data.sources.itemmap`; lab times are the specimen offsets
            (``labresultoffset``), intake/output times the later of the recorded and the entered offset. The
            large tables are streamed in blocks with pyarrow.
``codes``   ``diagnosis.icd9code``: eICU lists the ICD-9 and ICD-10 forms in one field (``"401.9, I10"``);
            each becomes a code (``icd9`` or ``icd10``, dots removed as in MIMIC-IV) dated at
            ``diagnosisoffset``, the time the diagnosis was entered during the stay.
``labels``  ``in_hospital_death`` (``hospitaldischargestatus`` Expired/Alive, empty when missing) and
            ``icu_length_of_stay`` (``unitdischargeoffset``, days), plus the APACHE IVa reference scores from
            ``apachePatientResult`` when present: ``apache_iva_score`` and ``apache_iva_predicted_death``
            (predicted hospital mortality). These are baselines to compare a model against, never features.
            ``apachePredVar`` is not read: it holds the APACHE model's inputs, including the outcome
            (``diedinhospital``).

Cohort choices
--------------
As for MIMIC-IV (:mod:`~healthfusion.data.sources.mimic4`): stays shorter than ``min_stay_hours`` (default:
the prediction time) are excluded and counted; events from ``lookback_hours`` before unit admission to unit
discharge are kept, others dropped as ``outside stay window``; events after the prediction time are kept for
the leakage guard :meth:`~healthfusion.data.cohort.Cohort.observable` to hide.

Row accounting
--------------
``patient`` (``missing unitdischargeoffset``, ``shorter than min_stay_hours``), ``hospital`` and
``apachePatientResult`` (``no stay in cohort``, ``not APACHE IVa``), ``diagnosis`` (``stay not in cohort``,
``missing code``, ``outside stay window``), ``lab`` and ``intakeOutput`` (``unmapped item``, ``stay not in
cohort``, ``missing time``, ``missing value``, ``implausible value``, ``outside stay window``). The vital
tables are wide: their rows are counted under the table name (used when a row carries at least one mapped
value; else ``no mapped value``) and the values under ``"<table> values"`` (``implausible value``). Static
ages, heights and weights are counted under ``"patient values"``.

Example::

    cohort = build("data/eicu_demo", prediction_hours=24)
    cohort.stays.groupby("site").size()
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from healthfusion.data.accounting import RowAccounting, combine_partitions
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.partition import Partitions, split_by_patient
from healthfusion.data.plausibility import PLAUSIBLE_RANGES, drop_implausible
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.data.sources.io import find_table, keep_rows, optional_table, read_table, stream_table
from healthfusion.data.sources.itemmap import (
    EICU_INTAKE_OUTPUT,
    EICU_LABS,
    EICU_VITAL_APERIODIC,
    EICU_VITAL_PERIODIC,
    UNKNOWN,
    age_group,
    ethnicity_group,
    sex_group,
)
from healthfusion.data.sources.mimic4 import check_hours, check_task
from healthfusion.files import display_path

log = logging.getLogger(__name__)

LABELS = (
    LabelSpec("in_hospital_death", "binary",
              description="Died in hospital (hospitaldischargestatus = Expired)."),
    LabelSpec("icu_length_of_stay", "regression",
              description="ICU unit length of stay in days (unitdischargeoffset)."),
)
APACHE_LABELS = (
    LabelSpec("apache_iva_score", "regression",
              description="APACHE IVa score: a reference baseline, not a feature."),
    LabelSpec(
        "apache_iva_predicted_death", "regression",
        description="APACHE IVa predicted hospital mortality (probability): a reference baseline, not a "
                    "feature.",
    ),
)
STATUS = {"alive": 0.0, "expired": 1.0}
APS_COLUMNS = (
    "intubated", "vent", "dialysis", "eyes", "motor", "verbal", "meds", "urine", "wbc", "temperature",
    "respiratoryrate", "sodium", "heartrate", "meanbp", "ph", "hematocrit", "creatinine", "albumin", "pao2",
    "pco2", "bun", "glucose", "bilirubin", "fio2",
)
_ICD9 = re.compile(r"^(\d{1,3}|V\d{2}|E\d{3})(\.\d{1,2})?$")
_ICD10 = re.compile(r"^[A-Z]\d{2}[0-9A-Z]?(\.[0-9A-Z]{1,4})?$")
_STAY = "patientunitstayid"


def build(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
    prediction_hours: float = 24.0,
    min_stay_hours: float | None = None,
    lookback_hours: float = 24.0,
    apache_features: bool = False,
    partitions: Partitions | None = None,
) -> Cohort:
    """Read an eICU extract into a cohort of ICU unit stays (see the module docstring for the tables).

    Parameters
    ----------
    path : str or Path
        Folder with ``patient``, ``hospital``, ``diagnosis``, ``vitalAperiodic`` and ``intakeOutput`` tables;
        ``vitalPeriodic``, ``lab`` and ``apachePatientResult`` (and ``apacheApsVar`` with ``apache_features``)
        are read when present.
    task : str, optional
        A label name the caller needs (e.g. ``"in_hospital_death"``); checked to exist, nothing else changes.
    progress : bool, default False
        Log progress while streaming the large event tables.
    prediction_hours : float, default 24
        Prediction time in hours since unit admission, the same for every stay.
    min_stay_hours : float, optional
        Stays with a shorter unit stay are excluded (counted); defaults to ``prediction_hours``.
    lookback_hours : float, default 24
        Events up to this many hours before unit admission are kept.
    apache_features : bool, default False
        Add the first-day APACHE physiology (``apacheApsVar``) as static features; needs
        ``prediction_hours >= 24``.
    partitions : Partitions, optional
        Reduce the event tables in groups of whole patients' stays through ``partitions.map`` (e.g. Ray tasks,
        :mod:`healthfusion.data.partition`); the same cohort and row accounting (events in another order).

    Returns
    -------
    Cohort
        Tables stays, static, events, codes and labels.

    Raises
    ------
    SourceError
        If an option is invalid, a required table or column is missing, a file is empty, an age, number or
        discharge status cannot be parsed (naming file, column and line), no stay is left, or ``task`` is not
        a label of the cohort.
    """
    root = Path(path)
    check_hours(prediction_hours=prediction_hours, min_stay_hours=min_stay_hours,
                lookback_hours=lookback_hours)
    if apache_features and prediction_hours < 24:
        raise SourceError(
            f"apache_features=True needs prediction_hours >= 24 (got {prediction_hours:g}): the APACHE "
            "physiology summarises the first 24 h of the stay and would leak later values into predictions."
        )
    apache = optional_table(root, "apachePatientResult")
    label_specs = list(LABELS) + (list(APACHE_LABELS) if apache is not None else [])
    check_task(task, label_specs, "eICU")
    min_stay = float(prediction_hours if min_stay_hours is None else min_stay_hours)
    acc = RowAccounting()
    stays = _stays(root, acc, min_stay)
    if stays.empty:
        raise SourceError(f"No ICU stay of {root} lasts at least {min_stay:g} h; lower min_stay_hours.")
    windows = stays[["stay_key", "stay_id"]].assign(start=-float(lookback_hours), end=stays["los_hours"])
    if partitions is None:
        events = pd.concat(_event_parts(root, windows, acc, progress), ignore_index=True)
    else:  # groups of whole patients, each reduced by partition_events (see healthfusion.data.partition)
        groups = split_by_patient(windows.assign(patient_id=stays["patient_id"].to_numpy()), partitions.n)
        results = partitions.map(partition_events, [(root, g.drop(columns="patient_id")) for g in groups])
        acc.merge(combine_partitions([RowAccounting.from_dict(c) for _, c in results], shared={
            "lab": ("unmapped item",)}, additive=("vitalAperiodic values", "vitalPeriodic values")))
        events = pd.concat([f for frames, _ in results for f in frames], ignore_index=True)
    codes = _codes(find_table(root, "diagnosis"), windows, acc)

    labels = stays[["stay_id", "in_hospital_death", "icu_length_of_stay"]].reset_index(drop=True)
    if apache is not None:
        labels = labels.merge(_apache_scores(apache, stays, acc), on="stay_id", how="left")
    static = stays[["stay_id", "Age", "Gender", "care_unit", "unit_admit_source", "Height", "Weight"]]
    feature_types = {"Age": "numeric", "Gender": "categorical", "care_unit": "categorical",
                     "unit_admit_source": "categorical", "Height": "numeric", "Weight": "numeric"}
    if apache_features:
        aps = _aps_features(find_table(root, "apacheApsVar"), stays, acc)
        static = static.merge(aps, on="stay_id", how="left")
        feature_types.update({c: "numeric" for c in aps.columns if c != "stay_id"})
    out = stays.assign(prediction_time=float(prediction_hours))[
        ["stay_id", "patient_id", "prediction_time", "site", "region", "care_unit", "age_group", "sex",
         "ethnicity"]]
    meta = CohortMeta(
        name="eicu", source="eicu", labels=label_specs, feature_types=feature_types,
        derived={"care_unit": ["care_unit"], "age_group": ["Age"], "sex": ["Gender"]},
        description=f"eICU unit stays of at least {min_stay:g} h, prediction at {prediction_hours:g} h after "
                    "unit admission.",
    )
    acc.check()
    log.info("%s: %d unit stays, %d events, %d codes", display_path(root), len(out), len(events), len(codes))
    return Cohort(out, static=static.reset_index(drop=True), events=events, codes=codes, labels=labels,
                  meta=meta, accounting=acc)


def _event_parts(root: Path, windows: pd.DataFrame, acc: RowAccounting, progress: bool) -> list[pd.DataFrame]:
    """Events of the stays in ``windows`` from the vital-sign, lab and intake/output tables."""
    parts = [_wide_events(find_table(root, "vitalAperiodic"), "vitalAperiodic", EICU_VITAL_APERIODIC,
                          "observationoffset", windows, acc, progress)]
    periodic, lab = optional_table(root, "vitalPeriodic"), optional_table(root, "lab")
    if periodic is not None:
        parts.append(_wide_events(periodic, "vitalPeriodic", EICU_VITAL_PERIODIC, "observationoffset",
                                  windows, acc, progress))
    if lab is not None:
        parts.append(_lab_events(lab, windows, acc, progress))
    parts.append(_io_events(find_table(root, "intakeOutput"), windows, acc, progress))
    for name in [n for n, file in (("vitalPeriodic", periodic), ("lab", lab)) if file is None]:
        log.info("%s: no %s table; its variables are absent from the cohort.", display_path(root), name)
    return parts


def partition_events(root: Path, windows: pd.DataFrame) -> tuple[list[pd.DataFrame], dict]:
    """One partition of a build: the events of the stays in ``windows`` and the accounting of their tables."""
    acc = RowAccounting()
    parts = _event_parts(root, windows, acc, False)
    acc.check()
    return parts, acc.to_dict()


# ------------------------------------------------------------------------------------------ stays and labels
def _stays(root: Path, acc: RowAccounting, min_stay: float) -> pd.DataFrame:
    path = find_table(root, "patient")
    pat = read_table(path, required=[_STAY, "uniquepid", "hospitalid", "unittype", "age", "gender",
                                     "ethnicity", "hospitaldischargestatus", "unitdischargeoffset",
                                     "unitadmitsource", "admissionheight", "admissionweight"],
                     dtypes={"age": str, "uniquepid": str, "hospitaldischargestatus": str})
    acc.read("patient", len(pat))
    pat.index = pat.index + 2  # the CSV line, for error messages
    offset = _numbers(pat["unitdischargeoffset"], path, "unitdischargeoffset")
    missing = offset.isna() | pat[_STAY].isna()
    acc.drop("patient", "missing unitdischargeoffset", int(missing.sum()))
    pat, offset = pat[~missing], offset[~missing]
    short = offset / 60.0 < min_stay
    acc.drop("patient", "shorter than min_stay_hours", int(short.sum()))
    pat, offset = pat[~short], offset[~short]
    acc.use("patient", len(pat))

    hosp_path = find_table(root, "hospital")
    hosp = read_table(hosp_path, required=["hospitalid", "region"])
    used = hosp["hospitalid"].isin(pat["hospitalid"])
    acc.read("hospital", len(hosp))
    acc.use("hospital", int(used.sum()))
    acc.drop("hospital", "no stay in cohort", int((~used).sum()))
    region = pat["hospitalid"].map(hosp.drop_duplicates("hospitalid").set_index("hospitalid")["region"])

    age = _ages(pat["age"], path)
    status = pat["hospitaldischargestatus"].astype(object).str.strip().str.lower()
    bad = status.notna() & ~status.isin(list(STATUS))
    if bad.any():
        line = int(bad[bad].index[0])
        raise SourceError(f"File {path}, column 'hospitaldischargestatus', line {line}: "
                          f"{pat['hospitaldischargestatus'][line]!r} is not Alive or Expired (or empty).")
    height = _plausible(_numbers(pat["admissionheight"], path, "admissionheight"), "Height", acc)
    weight = _plausible(_numbers(pat["admissionweight"], path, "admissionweight"), "Weight", acc)
    age = _plausible(age, "Age", acc)
    key = pat[_STAY].astype("int64")
    unit = pat["unittype"].astype(object).where(pat["unittype"].notna(), UNKNOWN)
    sex = sex_group(pat["gender"])
    return pd.DataFrame({
        "stay_key": key, "stay_id": key.astype(str), "patient_id": pat["uniquepid"].astype(str),
        "los_hours": offset / 60.0,
        "site": pat["hospitalid"].astype("int64").astype(str),
        "region": region.astype(object).where(region.notna(), UNKNOWN),
        "care_unit": unit, "age_group": age_group(age), "sex": sex,
        "ethnicity": ethnicity_group(pat["ethnicity"]), "Age": age, "Gender": sex,
        "unit_admit_source": pat["unitadmitsource"].astype(object).where(pat["unitadmitsource"].notna(),
                                                                         UNKNOWN),
        "Height": height, "Weight": weight,
        "in_hospital_death": status.map(STATUS),
        "icu_length_of_stay": offset / 1440.0,
    }).reset_index(drop=True)


def _numbers(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Numeric column; a non-number raises naming the line (``values.index`` holds the CSV lines)."""
    num = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & num.isna()
    if bad.any():
        line = int(bad[bad].index[0])
        raise SourceError(f"File {path}, column {column!r}, line {line}: {values[line]!r} is not a number.")
    return num.astype(float)


def _plausible(values: pd.Series, variable: str, acc: RowAccounting) -> pd.Series:
    """Blank values outside :data:`PLAUSIBLE_RANGES`; present values are counted as ``"patient values"``."""
    low, high, _unit = PLAUSIBLE_RANGES[variable]
    present = values.notna()
    bad = present & ~values.between(low, high)
    acc.read("patient values", int(present.sum()))
    acc.drop("patient values", "implausible value", int(bad.sum()))
    acc.use("patient values", int((present & ~bad).sum()))
    return values.where(~bad)


def _ages(values: pd.Series, path: Path) -> pd.Series:
    """eICU ages are strings: ``"> 89"`` (ages 90 and over) becomes 90, empty stays missing."""
    text = values.astype(object).str.strip()
    over = text.eq("> 89")
    return _numbers(text.where(~over, "90").where(text.ne(""), None), path, "age")


def _apache_scores(path: Path, stays: pd.DataFrame, acc: RowAccounting) -> pd.DataFrame:
    table = "apachePatientResult"
    df = read_table(path, required=[_STAY, "apacheversion", "apachescore", "predictedhospitalmortality"])
    acc.read(table, len(df))
    iva = df["apacheversion"].astype(str).str.strip().eq("IVa")
    acc.drop(table, "not APACHE IVa", int((~iva).sum()))
    df = df[iva]
    in_cohort = df[_STAY].isin(stays["stay_key"])
    acc.drop(table, "no stay in cohort", int((~in_cohort).sum()))
    df = df[in_cohort]
    dup = df[_STAY].duplicated()
    acc.drop(table, "duplicate stay", int(dup.sum()))
    df = df[~dup]
    acc.use(table, len(df))
    score = pd.to_numeric(df["apachescore"], errors="coerce")
    pred = pd.to_numeric(df["predictedhospitalmortality"], errors="coerce")
    return pd.DataFrame({
        "stay_id": df[_STAY].astype("int64").astype(str),
        "apache_iva_score": score.where(score >= 0),  # -1: not computed
        "apache_iva_predicted_death": pred.where(pred >= 0),
    })


def _aps_features(path: Path, stays: pd.DataFrame, acc: RowAccounting) -> pd.DataFrame:
    table = "apacheApsVar"
    df = read_table(path, required=[_STAY, *APS_COLUMNS])
    acc.read(table, len(df))
    in_cohort = df[_STAY].isin(stays["stay_key"])
    acc.drop(table, "no stay in cohort", int((~in_cohort).sum()))
    df = df[in_cohort]
    dup = df[_STAY].duplicated()
    acc.drop(table, "duplicate stay", int(dup.sum()))
    df = df[~dup]
    acc.use(table, len(df))
    out = pd.DataFrame({"stay_id": df[_STAY].astype("int64").astype(str)})
    for col in APS_COLUMNS:
        num = pd.to_numeric(df[col], errors="coerce").astype(float)
        out[f"aps_{col}"] = num.where(num != -1)
    return out


# ------------------------------------------------------------------------------------------ codes and events
def _codes(path: Path, windows: pd.DataFrame, acc: RowAccounting) -> pd.DataFrame:
    table = "diagnosis"
    dx = read_table(path, required=[_STAY, "diagnosisoffset", "icd9code"], dtypes={"icd9code": str})
    acc.read(table, len(dx))
    dx.index = dx.index + 2
    dx = dx.assign(time=_numbers(dx["diagnosisoffset"], path, "diagnosisoffset") / 60.0)
    in_cohort = dx[_STAY].isin(windows["stay_key"])
    acc.drop(table, "stay not in cohort", int((~in_cohort).sum()))
    dx = dx[in_cohort]
    tokens = dx["icd9code"].astype(object).str.split(",").explode().str.strip()
    kinds = [tokens.str.match(_ICD9.pattern, na=False), tokens.str.match(_ICD10.pattern, na=False)]
    system = pd.Series(np.select(kinds, ["icd9", "icd10"], default=""), index=tokens.index)
    unknown = tokens.notna() & tokens.ne("") & system.eq("")
    if unknown.any():
        log.warning("%s: %d code(s) are neither ICD-9 nor ICD-10 and were skipped, e.g. %r", display_path(path),
                    int(unknown.sum()), tokens[unknown].iloc[0])
    codes = pd.DataFrame({"line": tokens.index, "system": system.to_numpy(),
                          "code": tokens.str.replace(".", "", regex=False).to_numpy()})
    codes = codes[codes["system"] != ""]
    has_code = dx.index.isin(codes["line"])
    acc.drop(table, "missing code", int((~has_code).sum()))
    dx = dx[has_code]
    by_stay = windows.set_index("stay_key")
    dx = dx.assign(**{c: dx[_STAY].map(by_stay[c]) for c in ("stay_id", "start", "end")})
    inside = (dx["time"] >= dx["start"]) & (dx["time"] <= dx["end"])
    acc.drop(table, "outside stay window", int((~inside).sum()))
    dx = dx[inside]
    acc.use(table, len(dx))
    out = codes.merge(dx[["stay_id", "time"]], left_on="line", right_index=True)
    return out[["stay_id", "time", "system", "code"]].reset_index(drop=True)


def _window(df: pd.DataFrame, windows: pd.DataFrame, acc: RowAccounting, table: str) -> pd.DataFrame:
    """Attach stay_id and keep rows inside their stay's window (the others are counted)."""
    m = df.merge(windows, left_on=_STAY, right_on="stay_key")
    inside = (m["time"] >= m["start"]) & (m["time"] <= m["end"])
    acc.drop(table, "outside stay window", int((~inside).sum()))
    return m[inside]


def _stream(path: Path, table: str, columns: dict[str, str], windows: pd.DataFrame, acc: RowAccounting,
            progress: bool, keep=None):
    """Blocks of ``columns`` as DataFrames, with rows of stays outside the cohort (and, optionally, rows
    failing ``keep(table) -> mask``, counted as ``unmapped item``) removed and counted."""
    keys = pa.array(windows["stay_key"].to_numpy(dtype="int64"))
    for i, t in enumerate(stream_table(path, columns)):
        acc.read(table, t.num_rows)
        if progress and i % 20 == 0:
            log.info("%s: %d rows read", table, acc.tables[table].read)
        if keep is not None:
            t = keep_rows(t, keep(t), acc, table, "unmapped item")
        t = keep_rows(t, pc.is_in(t[_STAY], value_set=keys), acc, table, "stay not in cohort")
        if t.num_rows:
            yield t.to_pandas()


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({"stay_id": pd.Series(dtype=object), "time": pd.Series(dtype=float),
                         "variable": pd.Series(dtype=object), "value": pd.Series(dtype=float)})


def _wide_events(path: Path, table: str, mapping: dict[str, str], time_col: str, windows: pd.DataFrame,
                 acc: RowAccounting, progress: bool) -> pd.DataFrame:
    """A wide vital-sign table (one column per variable) -> long events (accounting: see the module docs)."""
    values_table = f"{table} values"
    columns = {_STAY: "int", time_col: "float", **{c: "float" for c in mapping}}
    out = []
    for df in _stream(path, table, columns, windows, acc, progress):
        no_time = df[time_col].isna()
        acc.drop(table, "missing time", int(no_time.sum()))
        df = df[~no_time].assign(time=df[time_col] / 60.0)
        df = _window(df, windows, acc, table)
        empty = df[list(mapping)].isna().all(axis=1)
        acc.drop(table, "no mapped value", int(empty.sum()))
        acc.use(table, int((~empty).sum()))
        long = df[~empty].melt(id_vars=["stay_id", "time"], value_vars=list(mapping), var_name="variable")
        long = long[long["value"].notna()]
        long["variable"] = long["variable"].map(mapping)
        acc.read(values_table, len(long))
        long = drop_implausible(long.reset_index(drop=True), acc, values_table)
        acc.use(values_table, len(long))
        out.append(long[["stay_id", "time", "variable", "value"]])
    return pd.concat(out, ignore_index=True) if out else _empty_events()


def _lab_events(path: Path, windows: pd.DataFrame, acc: RowAccounting, progress: bool) -> pd.DataFrame:
    table = "lab"
    names = pa.array(list(EICU_LABS))
    columns = {_STAY: "int", "labresultoffset": "float", "labname": "str", "labresult": "float"}
    out = []
    keep = lambda t: pc.is_in(pc.utf8_trim_whitespace(t["labname"]), value_set=names)  # noqa: E731
    for df in _stream(path, table, columns, windows, acc, progress, keep):
        mapped = df["labname"].str.strip().map(EICU_LABS)
        df = pd.DataFrame({
            _STAY: df[_STAY], "time": df["labresultoffset"] / 60.0, "variable": mapped.str[0],
            "value": df["labresult"] * mapped.str[1].astype(float),
        })
        out.append(_finish_long(df, windows, acc, table))
    return pd.concat(out, ignore_index=True) if out else _empty_events()


def _io_events(path: Path, windows: pd.DataFrame, acc: RowAccounting, progress: bool) -> pd.DataFrame:
    table = "intakeOutput"
    columns = {_STAY: "int", "intakeoutputoffset": "float", "intakeoutputentryoffset": "float",
               "cellpath": "str", "cellvaluenumeric": "float"}
    out = []
    for df in _stream(path, table, columns, windows, acc, progress):
        path_text = df["cellpath"].fillna("")
        label = path_text.str.rsplit("|", n=1).str[-1]
        variable = pd.Series(None, index=df.index, dtype=object)
        for cell, include, exclude, name in EICU_INTAKE_OUTPUT:
            hit = (variable.isna() & path_text.str.contains(cell) & label.str.contains(include)
                   & ~label.str.contains(exclude))
            variable[hit] = name
        acc.drop(table, "unmapped item", int(variable.isna().sum()))
        df, variable = df[variable.notna()], variable[variable.notna()]
        time = np.fmax(df["intakeoutputoffset"], df["intakeoutputentryoffset"]) / 60.0
        df = pd.DataFrame({_STAY: df[_STAY], "time": time, "variable": variable,
                           "value": df["cellvaluenumeric"]})
        out.append(_finish_long(df, windows, acc, table))
    return pd.concat(out, ignore_index=True) if out else _empty_events()


def _finish_long(df: pd.DataFrame, windows: pd.DataFrame, acc: RowAccounting, table: str) -> pd.DataFrame:
    """Drop rows without time, with missing/implausible values or outside the window; count the rest used."""
    no_time = df["time"].isna()
    acc.drop(table, "missing time", int(no_time.sum()))
    df = drop_implausible(df[~no_time].reset_index(drop=True), acc, table)
    df = _window(df, windows, acc, table)
    acc.use(table, len(df))
    return df[["stay_id", "time", "variable", "value"]]
