"""MIMIC-IV (v2.x, ``hosp/`` and ``icu/`` modules) -> :class:`~healthfusion.data.cohort.Cohort`, one row per
ICU stay.

``path`` is the MIMIC-IV root holding ``hosp/`` and ``icu/``; each table may be ``.csv.gz``, ``.csv`` or
``.parquet``. Time zero of a stay is its ICU admission (``icustays.intime``); all times are hours since then.

What the cohort holds
---------------------
``stays``   one row per ICU stay (``icustays.stay_id``), ``patient_id`` = ``subject_id``, ``prediction_time``
            = ``prediction_hours``; domains ``site`` (``"BIDMC"``), ``care_unit`` (``first_careunit``),
            ``sex`` (F/M), ``age_group`` (<40, 40-59, 60-79, 80+) and ``ethnicity`` (grouped
            ``admissions.race``: White, Black, Hispanic, Asian, Other, Unknown; see
            :mod:`~healthfusion.data.sources.itemmap`).
``static``  ``Age`` (``anchor_age`` + years from ``anchor_year`` to the ICU admission), ``Gender``,
            ``care_unit``, ``admission_type`` and ``insurance``. Race is a domain for fairness audits, not a
            model feature.
``events``  laboratory values from ``hosp/labevents``, bedside vitals from ``icu/chartevents`` **when
            present** and urine output from ``icu/outputevents`` when present, mapped through
            :data:`~healthfusion.data.sources.itemmap.MIMIC4_ITEMS` (canonical names and units, e.g.
            Fahrenheit converted to Celsius). Labs and urine outputs are kept one event per row.
            **Chartevents are kept as hourly means**: one event per stay, variable and hour, its value the
            mean of that hour's values and its time their mean time, with hours counted from the prediction
            time so that no hour straddles it (see :mod:`~healthfusion.data.sources.hourly`). The full
            table has about 330 million rows; what is kept grows with stays x hours x variables, not with
            the rows. ``GCS`` is derived in every hour where all three components have a value, as the sum of
            their hourly means. Tables are streamed in blocks with pyarrow, keeping only mapped items of
            cohort stays; convert the CSV files to Parquet once (``healthfusion cohort convert``) for
            rebuilds many times faster.
``codes``   ``hosp/diagnoses_icd`` (``system`` ``icd9``/``icd10`` from ``icd_version``), attached to every ICU
            stay of the admission; the stay window does not apply to them. Diagnoses are coded at discharge,
            so by default their time is the hospital discharge time and the prediction-time guard keeps them
            away from 24/48 h models.
            ``codes_at="admission"`` dates them at hospital admission instead: this **leaks** the whole stay's
            diagnoses into early predictions and is only meant for studies that want them as known history.
``labels``  ``in_hospital_death`` (``admissions.hospital_expire_flag``), ``icu_length_of_stay``
            (``icustays.los``, days) and ``readmission_30d`` (the same subject's next admission starts at most
            30 days after this admission's discharge; empty when the patient died in hospital).

Cohort choices
--------------
* Stays whose ICU length of stay is below ``min_stay_hours`` (default: the prediction time) are excluded: a
  model predicting at 48 h should be trained and evaluated only on stays still in the ICU at 48 h, otherwise
  early deaths and discharges - whose outcome is already known at prediction time - inflate its performance.
* Events are kept from ``lookback_hours`` before ICU admission (labs drawn in the emergency department) to ICU
  discharge; earlier or later ones are dropped and counted (``outside stay window``). A lab inside two stays'
  windows is attached to both. Events **after the prediction time are kept**: the cohort's single leakage
  guard, :meth:`~healthfusion.data.cohort.Cohort.observable`, hides them from every feature builder, and
  keeping them lets one cohort serve several prediction times.
* Hourly means of chartevents: a model's hourly grid (:class:`~healthfusion.features.timeseries.
  TimeSeriesTransformer` with 1 h steps, a whole number of hours) sees the same hourly averages as from the
  raw rows, but the standardisation it learns is that of hourly means, and a finer grid sees one value per
  hour. The alignment to the prediction time holds for prediction times a whole number of hours away.
* Lab times are the specimen times (``charttime``), as in common MIMIC benchmarks; a result reported after the
  prediction time for a sample drawn before it is then visible. ``lab_time="storetime"`` uses the time the
  result was stored instead (stricter).

Row accounting
--------------
Every row of every table read is used or dropped with a reason: ``icustays`` (``shorter than min_stay_hours``,
``missing stay_id, intime or outtime``, ``no admission row``, ``no patient row``), ``admissions`` /
``patients`` (``no ICU stay in cohort``), event tables (``unmapped item``, ``subject not in cohort`` / ``stay
not in cohort``, ``missing time``, ``missing value``, ``implausible value``, ``outside stay window``) and
``diagnoses_icd`` (``admission not in cohort``, ``missing code``).

Example::

    cohort = build("data/mimic_iv_demo", prediction_hours=48)
    cohort.label("in_hospital_death").mean()
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort, CohortWriter
from healthfusion.data.errors import SourceError
from healthfusion.data.partition import Partitions
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.data.sources.io import find_table, parse_times, read_table
from healthfusion.data.sources.itemmap import (
    UNKNOWN,
    age_group,
    ethnicity_group,
    mimic4_items,
    sex_group,
)
from healthfusion.data.sources.mimic4_events import event_parts, partitioned_events
from healthfusion.files import display_path

log = logging.getLogger(__name__)

SITE = "BIDMC"  # Beth Israel Deaconess Medical Center, Boston: every MIMIC-IV stay
LABELS = (
    LabelSpec("in_hospital_death", "binary",
              description="Died during the hospital admission (hospital_expire_flag)."),
    LabelSpec("icu_length_of_stay", "regression", description="ICU length of stay in days (icustays.los)."),
    LabelSpec(
        "readmission_30d", "binary",
        description="Next hospital admission of the same patient within 30 days of discharge; empty if died.",
    ),
)
CODES_AT = ("discharge", "admission")
LAB_TIMES = ("charttime", "storetime")


def build(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
    prediction_hours: float = 24.0,
    min_stay_hours: float | None = None,
    lookback_hours: float = 24.0,
    codes_at: str = "discharge",
    lab_time: str = "charttime",
    out: str | Path | None = None,
    partitions: Partitions | None = None,
) -> Cohort:
    """Read a MIMIC-IV extract into a cohort of ICU stays (see the module docstring for the tables).

    Parameters
    ----------
    path : str or Path
        MIMIC-IV root with ``hosp/`` (patients, admissions, labevents, diagnoses_icd) and ``icu/`` (icustays;
        chartevents and outputevents optional).
    task : str, optional
        A label name the caller needs (e.g. ``"in_hospital_death"``); checked to exist, nothing else changes.
    progress : bool, default False
        Log progress while streaming the large event tables.
    prediction_hours : float, default 24
        Prediction time in hours since ICU admission (typically 24 or 48), the same for every stay.
    min_stay_hours : float, optional
        Stays with a shorter ICU stay are excluded (counted); defaults to ``prediction_hours``.
    lookback_hours : float, default 24
        Events up to this many hours before ICU admission are kept.
    codes_at : {"discharge", "admission"}, default "discharge"
        Time given to diagnosis codes; ``"admission"`` is leakage-prone (see the module docstring).
    lab_time : {"charttime", "storetime"}, default "charttime"
        Which labevents time dates a lab value.
    out : str or Path, optional
        Write the cohort to this folder as it is built and return it loaded lazily from there: the hourly
        chartevents are written chunk by chunk (stays in order), so memory stays flat however large the table.
        Without it the cohort is built in memory.
    partitions : Partitions, optional
        Reduce the event tables in ``partitions.n`` parts, one call of ``partitions.map`` each (e.g. Ray tasks,
        see :mod:`healthfusion.data.partition`): disjoint ranges of row groups when every event table is
        Parquet, else groups of whole patients' stays (:mod:`~healthfusion.data.sources.mimic4_events`). The
        cohort and its row accounting are the same as without it (event rows in another order). The parts'
        events (chartevents: their hourly sums) are held in this process's memory until the build writes them.

    Returns
    -------
    Cohort
        Tables stays, static, events, codes and labels.

    Raises
    ------
    SourceError
        If an option is invalid, a required table or column is missing, a file is empty, a time or number
        cannot be parsed (naming file, column and line), a label value is not allowed, no stay is left, or
        ``task`` is not a label of the cohort.
    """
    root = Path(path)
    check_hours(prediction_hours=prediction_hours, min_stay_hours=min_stay_hours,
                lookback_hours=lookback_hours)
    if codes_at not in CODES_AT:
        raise SourceError(f"codes_at must be one of {CODES_AT}; got {codes_at!r}.")
    if lab_time not in LAB_TIMES:
        raise SourceError(f"lab_time must be one of {LAB_TIMES}; got {lab_time!r}.")
    check_task(task, LABELS, "MIMIC-IV")
    min_stay = float(prediction_hours if min_stay_hours is None else min_stay_hours)
    for sub in ("hosp", "icu"):
        if not (root / sub).is_dir():
            raise SourceError(f"{root / sub} does not exist; pass the MIMIC-IV root holding hosp/ and icu/.")
    acc = RowAccounting()
    stays = _stays(root, acc, min_stay)
    if stays.empty:
        raise SourceError(f"No ICU stay of {root} lasts at least {min_stay:g} h; lower min_stay_hours.")

    windows = stays[["subject_id", "stay_key", "stay_id", "intime"]].assign(
        start=-float(lookback_hours), end=stays["los_hours"])
    codes = _codes(root, stays, acc, codes_at)
    labels = _labels(stays)
    table = stays.assign(
        prediction_time=float(prediction_hours), site=SITE, care_unit=stays["first_careunit"].fillna(UNKNOWN),
        age_group=age_group(stays["Age"]), sex=stays["Gender"], ethnicity=ethnicity_group(stays["race"]),
    )[["stay_id", "patient_id", "prediction_time", "site", "care_unit", "age_group", "sex", "ethnicity"]]
    static = stays.assign(care_unit=stays["first_careunit"].fillna(UNKNOWN))[
        ["stay_id", "Age", "Gender", "care_unit", "admission_type", "insurance"]]
    meta = CohortMeta(
        name="mimic4", source="mimic4", labels=list(LABELS),
        derived={"care_unit": ["care_unit"], "age_group": ["Age"], "sex": ["Gender"]},
        feature_types={"Age": "numeric", "Gender": "categorical", "care_unit": "categorical",
                       "admission_type": "categorical", "insurance": "categorical"},
        description=(f"MIMIC-IV ICU stays of at least {min_stay:g} h, prediction at {prediction_hours:g} h "
                     f"after ICU admission; diagnosis codes dated at hospital {codes_at}."),
    )
    # one categorical coding for every part, so events stay compact (chartevents: millions)
    stay_ids, variables = pd.Index(stays["stay_id"]), pd.Index(sorted({*mimic4_items()["variable"], "GCS"}))

    def coded(part: pd.DataFrame) -> pd.DataFrame:
        return part.assign(stay_id=pd.Categorical(part["stay_id"], categories=stay_ids),
                           variable=pd.Categorical(part["variable"], categories=variables))

    if partitions is None:
        parts = event_parts(root, windows, prediction_hours, lab_time, acc, progress)
    else:
        parts = partitioned_events(root, windows, prediction_hours, lab_time, acc, partitions)
    if out is not None:
        n_events = 0
        with CohortWriter(out, meta, acc) as writer:
            writer.append(stays=table, static=static, codes=codes, labels=labels)
            for part in parts:
                writer.append(events=coded(part))
                n_events += len(part)
            acc.check()
        log.info("%s: %d ICU stays, %d events, %d codes written to %s", display_path(root), len(table), n_events,
                 len(codes), display_path(out))
        return Cohort.load(out)
    events = pd.concat([coded(p) for p in parts], ignore_index=True)
    acc.check()
    log.info("%s: %d ICU stays, %d events, %d codes", root, len(table), len(events), len(codes))
    return Cohort(table, static=static, events=events, codes=codes, labels=labels, meta=meta, accounting=acc)


def check_hours(**hours: float | None) -> None:
    """Raise :class:`SourceError` unless each named option is a finite number of hours: ``prediction_hours``
    positive, the others non-negative (``None`` allowed for ``min_stay_hours``)."""
    for name, value in hours.items():
        if value is None and name == "min_stay_hours":
            continue
        positive = name == "prediction_hours"
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and bool(np.isfinite(value))
        if not ok or value < 0 or (positive and value == 0):
            kind = "positive" if positive else "non-negative"
            raise SourceError(f"{name} must be a {kind} number of hours; got {value!r}.")


def check_task(task: str | None, labels, source: str) -> None:
    """Raise :class:`SourceError` unless ``task`` is None or the name of one of ``labels``."""
    names = [s.name for s in labels]
    if task is not None and task not in names:
        raise SourceError(f"Task {task!r} is not a label of the {source} cohort; labels are {names}.")


# -------------------------------------------------------------------------------------- stays, labels, codes
def _stays(root: Path, acc: RowAccounting, min_stay: float) -> pd.DataFrame:
    """icustays joined to admissions and patients; one row per kept stay with helper columns."""
    path = find_table(root / "icu", "icustays")
    icu = read_table(path, required=["subject_id", "hadm_id", "stay_id", "first_careunit", "intime",
                                     "outtime", "los"])
    acc.read("icustays", len(icu))
    icu["intime"] = parse_times(icu["intime"], icu.index + 2, path, "intime")
    icu["outtime"] = parse_times(icu["outtime"], icu.index + 2, path, "outtime")
    missing = icu["intime"].isna() | icu["outtime"].isna() | icu["stay_id"].isna()
    acc.drop("icustays", "missing stay_id, intime or outtime", int(missing.sum()))
    icu = icu[~missing].copy()
    icu["los_hours"] = (icu["outtime"] - icu["intime"]) / np.timedelta64(1, "h")
    short = icu["los_hours"] < min_stay
    acc.drop("icustays", "shorter than min_stay_hours", int(short.sum()))
    icu = icu[~short]

    adm_path = find_table(root / "hosp", "admissions")
    adm = read_table(adm_path, required=["subject_id", "hadm_id", "admittime", "dischtime", "admission_type",
                                         "insurance", "hospital_expire_flag"])
    race = "race" if "race" in adm.columns else "ethnicity"  # MIMIC-IV v1 called it ethnicity
    if race not in adm.columns:
        raise SourceError(f"File {adm_path} lacks column 'race' (or 'ethnicity' in MIMIC-IV v1.0).")
    adm = adm.rename(columns={race: "race"})
    for col in ("admittime", "dischtime"):
        adm[col] = parse_times(adm[col], adm.index + 2, adm_path, col)
    adm["hospital_expire_flag"] = _binary(adm["hospital_expire_flag"], adm_path, "hospital_expire_flag")
    pat_path = find_table(root / "hosp", "patients")
    pat = read_table(pat_path, required=["subject_id", "gender", "anchor_age", "anchor_year"])

    no_adm = ~icu["hadm_id"].isin(adm["hadm_id"])
    acc.drop("icustays", "no admission row", int(no_adm.sum()))
    icu = icu[~no_adm]
    no_pat = ~icu["subject_id"].isin(pat["subject_id"])
    acc.drop("icustays", "no patient row", int(no_pat.sum()))
    icu = icu[~no_pat]
    acc.use("icustays", len(icu))

    _account_lookup(acc, "admissions", adm["hadm_id"].isin(icu["hadm_id"]))
    _account_lookup(acc, "patients", pat["subject_id"].isin(icu["subject_id"]))
    adm = adm.sort_values(["subject_id", "admittime"])
    next_admit = adm.groupby("subject_id")["admittime"].shift(-1)
    gap_days = (next_admit - adm["dischtime"]) / np.timedelta64(1, "D")
    adm["readmission_30d"] = (gap_days <= 30).astype(float).where(adm["hospital_expire_flag"] != 1)

    df = icu.merge(adm.drop(columns=["subject_id"]), on="hadm_id", how="left", validate="many_to_one")
    df = df.merge(pat, on="subject_id", how="left", validate="many_to_one")
    df["Age"] = pd.to_numeric(df["anchor_age"], errors="coerce") + (
        df["intime"].dt.year - pd.to_numeric(df["anchor_year"], errors="coerce"))
    df["Gender"] = sex_group(df["gender"])
    df["stay_key"] = df["stay_id"].astype("int64")
    df["stay_id"] = df["stay_key"].astype(str)
    df["patient_id"] = df["subject_id"].astype("int64").astype(str)
    for col in ("admission_type", "insurance"):
        df[col] = df[col].astype(object).where(df[col].notna(), UNKNOWN)
    return df.reset_index(drop=True)


def _account_lookup(acc: RowAccounting, table: str, used: pd.Series) -> None:
    acc.read(table, len(used))
    acc.use(table, int(used.sum()))
    acc.drop(table, "no ICU stay in cohort", int((~used).sum()))


def _binary(values: pd.Series, path: Path, column: str) -> pd.Series:
    num = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & ~num.isin([0, 1])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.astype(object).iloc[i]
        raise SourceError(f"File {path}, column {column!r}, line {i + 2}: value {value!r} is not 0 or 1.")
    return num


def _labels(stays: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "stay_id": stays["stay_id"],
        "in_hospital_death": stays["hospital_expire_flag"],
        "icu_length_of_stay": pd.to_numeric(stays["los"], errors="coerce"),
        "readmission_30d": stays["readmission_30d"],
    })


def _codes(root: Path, stays: pd.DataFrame, acc: RowAccounting, codes_at: str) -> pd.DataFrame:
    path = find_table(root / "hosp", "diagnoses_icd")
    dx = read_table(path, required=["hadm_id", "icd_code", "icd_version"])
    table = "diagnoses_icd"
    acc.read(table, len(dx))
    version = pd.to_numeric(dx["icd_version"], errors="coerce")
    bad = ~version.isin([9, 10])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        value = dx["icd_version"].astype(object).iloc[i]
        raise SourceError(f"File {path}, column 'icd_version', line {i + 2}: {value!r} is not 9 or 10.")
    code = dx["icd_code"]  # strip text columns as they are (pyarrow strings: vectorized), numbers as objects
    code = code.str.strip() if pd.api.types.is_string_dtype(code) else code.astype(object).str.strip()
    dx = dx.assign(system=np.where(version == 9, "icd9", "icd10"), code=code)
    in_cohort = dx["hadm_id"].isin(stays["hadm_id"])
    acc.drop(table, "admission not in cohort", int((~in_cohort).sum()))
    dx = dx[in_cohort]
    no_code = dx["code"].isna() | dx["code"].eq("")
    acc.drop(table, "missing code", int(no_code.sum()))
    dx = dx[~no_code]
    acc.use(table, len(dx))
    anchor = "dischtime" if codes_at == "discharge" else "admittime"
    m = dx.merge(stays[["hadm_id", "stay_id", "intime", anchor]], on="hadm_id")
    m["time"] = (m[anchor] - m["intime"]) / np.timedelta64(1, "h")
    return m[["stay_id", "time", "system", "code"]].reset_index(drop=True)
