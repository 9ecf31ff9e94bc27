"""Two UCI tabular benchmarks: Diabetes 130-US hospitals (:func:`build_diabetes130`) and Heart Disease
(:func:`build_heart_disease`).

Diabetes 130-US hospitals 1999-2008
-----------------------------------
``diabetic_data.csv(.gz)``: one row per inpatient encounter (``encounter_id`` -> stay, ``patient_nbr`` ->
patient). ``?`` is missing; ``None`` in ``max_glu_serum``/``A1Cresult`` means "not measured" and is kept as a
category. Admission type, discharge disposition and admission source are decoded with ``IDs_mapping.csv`` when it
is beside the data (ids it lacks stay as their number). ICD-9 codes ``diag_1``..``diag_3`` go to the codes table
(system ``icd9``) at the discharge time; the file drops leading zeros (``8`` for ``008``), so numeric codes are
padded back to three digits. Domains: ``age_group`` (<40, 40-59, 60-79, 80+ from the ten-year age bands), ``sex``
and ``ethnicity`` (from ``race``); the data names no hospital.

Two prediction times, chosen by ``task``:

* at discharge (``task`` None, ``"readmitted"`` or ``"readmit_30d"``): ``prediction_time`` = ``time_in_hospital``
  x 24 h; static features are everything known at discharge, ``time_in_hospital`` included; labels
  ``readmitted`` (multiclass ``NO``/``>30``/``<30``) and ``readmit_30d`` (binary, ``<30``).
* at admission (``task="time_in_hospital"``): ``prediction_time`` 0; static features are only those known on
  admission (demographics, weight, payer, admission type/source, admitting specialty); the diagnosis codes, coded at
  discharge, are hidden by the leakage guard. Labels ``time_in_hospital`` (days, regression) and the two
  readmission labels. The length of stay is never a label of a cohort where it is also a feature.

Row accounting: table ``diabetic_data`` (every row is used as a stay) and ``diabetic_data diag_1..3`` (each of the
three code cells used, or dropped as ``missing value``).

Heart Disease (four sites)
--------------------------
``processed.cleveland.data``, ``processed.hungarian.data``, ``processed.switzerland.data``,
``processed.va.data``: headerless CSV with the 14 "processed" attributes, ``?`` missing. Each row is a stay of its
own patient; ``site`` (Cleveland, Hungary, Switzerland, VA Long Beach) is the domain for transfer experiments, with
``sex`` and ``age_group``. ``chol`` and ``trestbps`` of 0 mean "not measured" (all Swiss cholesterol values are 0)
and become empty. Labels ``disease`` (binary, ``num > 0``) and ``num`` (multiclass ``"0"``..``"4"``). Row
accounting per file: every row is used.

Example::

    cohort = build_diabetes130("data/uci_diabetes130")
    cohort = build_heart_disease("data/uci_heart_disease", sites=["cleveland", "hungarian"])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.data.sources.itemmap import UNKNOWN, age_group, sex_group
from healthfusion.data.sources.read_errors import reading
from healthfusion.files import display_path

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ diabetes 130
DIABETES_FILE = "diabetic_data"
READMITTED = ("<30", ">30", "NO")
ID_COLUMNS = ("admission_type_id", "discharge_disposition_id", "admission_source_id")
MEDICATIONS = (
    "metformin", "repaglinide", "nateglinide", "chlorpropamide", "glimepiride", "acetohexamide", "glipizide",
    "glyburide", "tolbutamide", "pioglitazone", "rosiglitazone", "acarbose", "miglitol", "troglitazone",
    "tolazamide", "examide", "citoglipton", "insulin", "glyburide-metformin", "glipizide-metformin",
    "glimepiride-pioglitazone", "metformin-rosiglitazone", "metformin-pioglitazone",
)
# known on admission
ADMISSION_CATEGORICAL = ("race", "gender", "age", "weight", "admission_type_id", "admission_source_id", "payer_code",
                         "medical_specialty")
ADMISSION_NUMERIC = ("number_outpatient", "number_emergency", "number_inpatient")  # visits in the preceding year
# known only at discharge
DISCHARGE_CATEGORICAL = ("discharge_disposition_id", "max_glu_serum", "A1Cresult", *MEDICATIONS, "change",
                         "diabetesMed")
DISCHARGE_NUMERIC = ("time_in_hospital", "num_lab_procedures", "num_procedures", "num_medications",
                     "number_diagnoses")
DIAGNOSES = ("diag_1", "diag_2", "diag_3")
DIABETES_COLUMNS = ("encounter_id", "patient_nbr", *ADMISSION_CATEGORICAL, *ADMISSION_NUMERIC,
                    *DISCHARGE_CATEGORICAL, *DISCHARGE_NUMERIC, *DIAGNOSES, "readmitted")
RACE_GROUPS = {"Caucasian": "White", "AfricanAmerican": "Black", "Hispanic": "Hispanic", "Asian": "Asian",
               "Other": "Other"}
DIABETES_TASKS = ("readmitted", "readmit_30d", "time_in_hospital")
_READMIT_LABELS = (
    LabelSpec("readmitted", "multiclass", READMITTED,
              description="Readmission after discharge: <30 days, >30 days, or NO record of readmission."),
    LabelSpec("readmit_30d", "binary", description="Readmitted within 30 days of discharge (readmitted == '<30')."),
)
_LOS_LABEL = LabelSpec("time_in_hospital", "regression",
                       description="Length of stay in days (1-14), predicted at admission.")


def build_diabetes130(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
) -> Cohort:
    """Read UCI Diabetes 130-US hospitals into a cohort (see the module docstring for the two prediction times).

    Parameters
    ----------
    path : str or Path
        The folder holding ``diabetic_data.csv(.gz)`` (and ``IDs_mapping.csv``), or the data file itself.
    task : {None, "readmitted", "readmit_30d", "time_in_hospital"}
        ``"time_in_hospital"`` builds the admission-time cohort; the others the discharge-time one.
    progress : bool, default False
        Unused (a single read); accepted for the common source signature.

    Raises
    ------
    SourceError
        If the file or a column is missing; an ``encounter_id`` repeats; ``time_in_hospital`` is not a positive
        whole number of days; ``readmitted`` is not ``<30``, ``>30`` or ``NO``, or a numeric column holds text
        (each naming the line); ``task`` is unknown.
    """
    del progress
    if task is not None and task not in DIABETES_TASKS:
        raise SourceError(f"Task {task!r} is not a Diabetes 130 label; choose one of {list(DIABETES_TASKS)}.")
    file = _diabetes_file(Path(path))
    table = DIABETES_FILE
    try:
        with reading(file):
            df = pd.read_csv(file, dtype=str, keep_default_na=False, na_values=["?"])
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise SourceError(f"File {file} could not be read as a CSV table ({exc}).") from exc
    missing = [c for c in DIABETES_COLUMNS if c not in df.columns]
    if missing:
        raise SourceError(f"File {file} lacks column(s) {missing}; is it diabetic_data.csv of UCI dataset 296?")
    acc = RowAccounting()
    acc.read(table, len(df))

    def where(i: int) -> str:
        return f"File {file}, line {i + 2}"

    for col in ("encounter_id", "patient_nbr"):
        empty = df[col].isna() | df[col].str.strip().eq("")
        if empty.any():
            raise SourceError(f"{where(int(np.flatnonzero(empty.to_numpy())[0]))}: {col} is empty.")
    dup = df["encounter_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise SourceError(f"{where(i)}: encounter_id {df['encounter_id'].iloc[i]} appears more than once.")
    bad = ~df["readmitted"].isin(READMITTED)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceError(f"{where(i)}: readmitted is {df['readmitted'].iloc[i]!r}; expected one of {list(READMITTED)}.")
    numeric = {c: _numbers(df[c], c, where) for c in (*ADMISSION_NUMERIC, *DISCHARGE_NUMERIC)}
    los = numeric["time_in_hospital"]
    bad = los.isna() | (los <= 0) | (los % 1 != 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceError(f"{where(i)}: time_in_hospital is {df['time_in_hospital'].iloc[i]!r}; expected whole days >= 1.")

    at_admission = task == "time_in_hospital"
    ids = df["encounter_id"].str.strip().to_numpy(dtype=object)
    decoded = _decode_ids(df, file.parent / "IDs_mapping.csv")
    categorical = ADMISSION_CATEGORICAL if at_admission else ADMISSION_CATEGORICAL + DISCHARGE_CATEGORICAL
    numeric_cols = ADMISSION_NUMERIC if at_admission else ADMISSION_NUMERIC + DISCHARGE_NUMERIC
    static = pd.DataFrame({"stay_id": ids})
    for col in categorical:
        static[col] = (decoded[col] if col in decoded else df[col]).to_numpy(dtype=object)
    for col in numeric_cols:
        static[col] = numeric[col].to_numpy(dtype=float)
    discharge = los.to_numpy(dtype=float) * 24.0
    stays = pd.DataFrame({
        "stay_id": ids,
        "patient_id": df["patient_nbr"].str.strip().to_numpy(dtype=object),
        "prediction_time": 0.0 if at_admission else discharge,
        "age_group": _diabetes_age_group(df["age"]).to_numpy(dtype=object),
        "sex": _per_value(df["gender"], sex_group).fillna(UNKNOWN).to_numpy(dtype=object),
        "ethnicity": df["race"].map(RACE_GROUPS).fillna(UNKNOWN).to_numpy(dtype=object),
    })
    acc.use(table, len(df))
    codes = _diagnoses(df, ids, discharge, acc)
    labels = pd.DataFrame({
        "stay_id": ids,
        "readmitted": df["readmitted"].to_numpy(dtype=object),
        "readmit_30d": (df["readmitted"] == "<30").astype("int64").to_numpy(),
    })
    specs = list(_READMIT_LABELS)
    if at_admission:
        labels["time_in_hospital"] = los.to_numpy(dtype=float)
        specs.append(_LOS_LABEL)
    meta = CohortMeta(
        name="diabetes130" + ("-admission" if at_admission else ""),
        source="diabetes130",
        feature_types={**{c: "categorical" for c in categorical}, **{c: "numeric" for c in numeric_cols}},
        labels=specs,
        derived={"age_group": ["age"], "sex": ["gender"], "ethnicity": ["race"]},
        description="UCI Diabetes 130-US hospitals 1999-2008: inpatient encounters of diabetic patients, predicted "
                    + ("at admission." if at_admission else "at discharge."),
    )
    acc.check()
    log.info("%s: %d encounters of %d patients, %d codes", file.name, len(stays), stays["patient_id"].nunique(),
             len(codes))
    return Cohort(stays, static=static, codes=codes, labels=labels, meta=meta, accounting=acc)


def _diabetes_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in (f"{DIABETES_FILE}.csv.gz", f"{DIABETES_FILE}.csv"):
            if (path / name).is_file():
                return path / name
        raise SourceError(f"Folder {path} holds no {DIABETES_FILE}.csv(.gz); pass the UCI Diabetes 130 folder.")
    raise SourceError(f"{path} does not exist; pass the folder holding {DIABETES_FILE}.csv(.gz) or the file.")


def _numbers(values: pd.Series, column: str, where) -> pd.Series:
    out = pd.to_numeric(values, errors="coerce")
    bad = out.isna() & values.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceError(f"{where(i)}: {column} is {values.iloc[i]!r}; expected a number.")
    return out


def _per_value(values: pd.Series, func) -> pd.Series:
    """``func`` applied once per distinct value (string operations on 100,000s of rows are slow)."""
    codes, uniques = pd.factorize(values)
    mapped = func(pd.Series(uniques, dtype=object)).to_numpy(dtype=object)
    out = np.full(len(values), None, dtype=object)
    out[codes >= 0] = mapped[codes[codes >= 0]]
    return pd.Series(out, index=values.index)


def _diabetes_age_group(age: pd.Series) -> pd.Series:
    """``[70-80)`` -> ``60-79`` etc. (the bands nest in the shared groups <40, 40-59, 60-79, 80+)."""
    def group(bands: pd.Series) -> pd.Series:
        return age_group(pd.to_numeric(bands.str.extract(r"^\[(\d+)-\d+\)$")[0], errors="coerce"))

    return _per_value(age, group).fillna(UNKNOWN)


def _decode_ids(df: pd.DataFrame, mapping_file: Path) -> dict[str, pd.Series]:
    """Admission type, discharge disposition and admission source ids -> their descriptions."""
    if not mapping_file.is_file():
        log.info("%s not found; admission/discharge ids stay numeric categories.", display_path(mapping_file))
        return {}
    mappings: dict[str, dict[str, str]] = {}
    current = None
    try:
        with reading(mapping_file):
            rows = pd.read_csv(mapping_file, header=None, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise SourceError(f"File {mapping_file} could not be read as a CSV table ({exc}).") from exc
    for line in rows.itertuples(index=False):
        key, value = (line[0] or "").strip(), (line[1] if len(line) > 1 else "").strip()
        if key in ID_COLUMNS:
            current = mappings.setdefault(key, {})
        elif key and current is not None:
            current[key] = value
    out = {}
    for col in ID_COLUMNS:
        mapping = mappings.get(col, {})
        unmapped = sorted({str(v).strip() for v in df[col].dropna().unique()} - set(mapping))
        if unmapped:
            log.warning("%s has no description for %s %s; they stay as ids.", mapping_file.name, col, unmapped)
        out[col] = _per_value(df[col], lambda ids, m=mapping: _describe(ids.str.strip(), m))
    return out


def _describe(ids: pd.Series, mapping: dict[str, str]) -> pd.Series:
    return ids.map(mapping).fillna(ids)


def _diagnoses(df: pd.DataFrame, ids: np.ndarray, time: np.ndarray, acc: RowAccounting) -> pd.DataFrame:
    table = f"{DIABETES_FILE} diag_1..3"
    frames = []
    for col in DIAGNOSES:
        code = df[col].str.strip()
        acc.read(table, len(code))
        present = code.notna() & code.ne("")
        acc.drop(table, "missing value", int((~present).sum()))
        acc.use(table, int(present.sum()))
        frames.append(pd.DataFrame({"stay_id": ids[present.to_numpy()], "time": time[present.to_numpy()],
                                    "system": "icd9", "code": _per_value(code[present], _icd9).to_numpy(dtype=object),
                                    "position": int(col[-1])}))
    return pd.concat(frames, ignore_index=True)


def _icd9(codes: pd.Series) -> pd.Series:
    """Restore leading zeros of numeric ICD-9 codes (``8`` -> ``008``, ``38.1`` -> ``038.1``)."""
    parts = codes.str.extract(r"^(\d{1,2})(\.\d+)?$")
    padded = parts[0].str.zfill(3) + parts[1].fillna("")
    return padded.where(parts[0].notna(), codes)


# ------------------------------------------------------------------------------------------------ heart disease
HEART_SITES = {
    "cleveland": "Cleveland",
    "hungarian": "Hungary",
    "switzerland": "Switzerland",
    "va": "VA Long Beach",
}
HEART_COLUMNS = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope",
                 "ca", "thal", "num")
HEART_CATEGORICAL = ("sex", "cp", "fbs", "restecg", "exang", "slope", "thal")
HEART_NUMERIC = ("age", "trestbps", "chol", "thalach", "oldpeak", "ca")
HEART_ZERO_MISSING = ("trestbps", "chol")
HEART_LABELS = (
    LabelSpec("disease", "binary", description="Angiographic heart disease: num > 0 (> 50 % diameter narrowing)."),
    LabelSpec("num", "multiclass", ("0", "1", "2", "3", "4"), description="Diagnosis of heart disease, 0-4."),
)


def build_heart_disease(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
    sites: Sequence[str] | None = None,
) -> Cohort:
    """Read the UCI Heart Disease ``processed.<site>.data`` files into one cohort with a ``site`` domain.

    Parameters
    ----------
    path : str or Path
        The folder holding ``processed.cleveland.data`` etc.
    task : {None, "disease", "num"}
        Checked to be a label; nothing else changes.
    progress : bool, default False
        Unused (small files); accepted for the common source signature.
    sites : sequence of {"cleveland", "hungarian", "switzerland", "va"}, optional
        The sites to read; by default every site whose file is present.

    Raises
    ------
    SourceError
        If the folder, a requested site file, or every site file is missing; a row has not 14 values; a value
        is not a number or ``?``; ``num`` is not 0-4 (each naming file and line); ``sex``, ``cp``, ``fbs``,
        ``exang`` hold codes outside their range; ``sites`` or ``task`` is unknown.
    """
    del progress
    folder = Path(path)
    if task is not None and task not in [s.name for s in HEART_LABELS]:
        raise SourceError(f"Task {task!r} is not a Heart Disease label; choose 'disease' or 'num'.")
    if not folder.is_dir():
        raise SourceError(f"Folder {folder} does not exist; pass the folder holding processed.<site>.data files.")
    if sites is None:
        chosen = [s for s in HEART_SITES if (folder / f"processed.{s}.data").is_file()]
        if not chosen:
            raise SourceError(f"Folder {folder} holds none of {[f'processed.{s}.data' for s in HEART_SITES]}.")
    else:
        chosen = [sites] if isinstance(sites, str) else list(sites)
        unknown = [s for s in chosen if s not in HEART_SITES]
        if unknown:
            raise SourceError(f"Unknown site(s) {unknown}; sites are {list(HEART_SITES)}.")
    acc = RowAccounting()
    frames = [_heart_site(folder / f"processed.{s}.data", s, acc) for s in chosen]
    df = pd.concat(frames, ignore_index=True)
    ids = df["stay_id"].to_numpy(dtype=object)
    stays = pd.DataFrame({
        "stay_id": ids,
        "patient_id": ids,
        "prediction_time": 0.0,
        "site": df["site"].to_numpy(dtype=object),
        "age_group": age_group(df["age"]).to_numpy(dtype=object),
        "sex": df["sex"].map({1.0: "M", 0.0: "F"}).fillna(UNKNOWN).to_numpy(dtype=object),
    })
    static = pd.DataFrame({"stay_id": ids})
    for col in HEART_COLUMNS[:-1]:
        if col in HEART_CATEGORICAL:
            static[col] = df[col].map(lambda v: None if pd.isna(v) else f"{v:g}").to_numpy(dtype=object)
        else:
            static[col] = df[col].to_numpy(dtype=float)
    labels = pd.DataFrame({
        "stay_id": ids,
        "disease": (df["num"] > 0).astype("int64").to_numpy(),
        "num": df["num"].map(lambda v: f"{v:g}").to_numpy(dtype=object),
    })
    meta = CohortMeta(
        name="heart_disease",
        derived={"age_group": ["age"], "sex": ["sex"]},
        source="heart_disease",
        feature_types={c: ("categorical" if c in HEART_CATEGORICAL else "numeric") for c in HEART_COLUMNS[:-1]},
        labels=list(HEART_LABELS),
        description=f"UCI Heart Disease, sites: {', '.join(HEART_SITES[s] for s in chosen)}.",
    )
    acc.check()
    return Cohort(stays, static=static, labels=labels, meta=meta, accounting=acc)


_HEART_CODES = {"sex": {0, 1}, "cp": {1, 2, 3, 4}, "fbs": {0, 1}, "exang": {0, 1}, "num": {0, 1, 2, 3, 4}}


def _heart_site(file: Path, site: str, acc: RowAccounting) -> pd.DataFrame:
    if not file.is_file():
        raise SourceError(f"Site file {file} does not exist; leave {site!r} out of sites or add the file.")
    with reading(file):
        lines = file.read_text(encoding="utf-8").splitlines()
    rows = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    acc.read(file.name, len(rows))
    if not rows:
        raise SourceError(f"Site file {file} is empty; expected rows of 14 comma-separated values.")
    values = []
    for number, line in rows:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(HEART_COLUMNS):
            raise SourceError(f"File {file}, line {number}: expected {len(HEART_COLUMNS)} comma-separated values "
                              f"({', '.join(HEART_COLUMNS)}), got {len(fields)}.")
        values.append(fields)
    raw = pd.DataFrame(values, columns=list(HEART_COLUMNS))
    line_of = [number for number, _ in rows]
    df = pd.DataFrame(index=raw.index)
    for col in HEART_COLUMNS:
        text = raw[col].where(raw[col] != "?")
        num = pd.to_numeric(text, errors="coerce")
        bad = num.isna() & text.notna()
        if col == "num":
            bad = ~num.isin(list(_HEART_CODES["num"]))
        elif col in _HEART_CODES:
            bad |= num.notna() & ~num.isin(list(_HEART_CODES[col]))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            allowed = f"one of {sorted(_HEART_CODES[col])}" if col in _HEART_CODES else "a number or ?"
            raise SourceError(f"File {file}, line {line_of[i]}: {col} is {raw[col].iloc[i]!r}; expected {allowed}.")
        df[col] = num
    for col in HEART_ZERO_MISSING:
        df.loc[df[col] == 0, col] = np.nan
    acc.use(file.name, len(df))
    df.insert(0, "site", HEART_SITES[site])
    df.insert(0, "stay_id", [f"{site}-{n:03d}" for n in line_of])
    return df
