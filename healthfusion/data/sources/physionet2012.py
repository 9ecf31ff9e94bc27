"""PhysioNet/CinC Challenge 2012 ("Predicting mortality of ICU patients"): one set of 4,000 ICU stays.

Input is a set, either as its folder (``set-a/`` holding ``<RecordID>.txt``) or as the archive PhysioNet ships
(``set-a.tar.gz``, read member by member, never extracted to disk), plus an optional outcomes file
(``Outcomes-a.txt``). Each record file is a CSV ``Time,Parameter,Value`` with ``Time`` as ``hh:mm`` since ICU
admission.

What the cohort holds
---------------------
``stays``   one row per record: ``stay_id`` = ``patient_id`` = RecordID (the challenge gives no patient identifier),
            ``prediction_time`` = ``hours`` (default 48), ``care_unit`` (ICUType: CCU, CSRU, MICU, SICU),
            ``age_group`` (<40, 40-59, 60-79, 80+) and ``sex`` (F, M); unknown domain values are ``"Unknown"``.
``static``  the general descriptors (recorded at 00:00; only rows at or before the prediction time are used): ``Age``, ``Gender`` (F/M, categorical), ``Height`` (cm),
            ``ICUType`` (categorical) and ``Weight`` (kg, the admission weight). ``-1`` (the challenge's code for
            missing) and values outside :data:`~healthfusion.data.plausibility.PLAUSIBLE_RANGES` become empty.
``events``  the 37 time-series parameters (PhysioNet names, e.g. ``HR``, ``MechVent``, ``Weight``), time in hours;
            a ``-1`` value is the challenge's missing code and is dropped as missing.
``labels``  from the outcomes file when there is one: ``in_hospital_death`` (binary, the challenge label),
            ``length_of_stay`` (days), ``survival_days`` (days to death, empty when not known to have died),
            ``saps_i`` and ``sofa``. SAPS-I and SOFA are the severity scores the challenge ships with its outcomes;
            they are labels (clinical baselines to compare against), never static features, so they cannot leak
            into a model's inputs. ``-1`` in the outcomes file is missing.

Row accounting
--------------
Table ``"<set>/*.txt"`` counts every data line of every record file (the header line of each file excepted):
used (a descriptor moved to ``static`` or a time-series value kept as an event) or dropped as ``missing value``
(empty or ``-1``), ``implausible value``, ``duplicate row`` (the same record, time, parameter and value twice),
``duplicate descriptor`` (a second descriptor row of the same kind in one record; the first is kept),
``descriptor after prediction time`` (a descriptor row later than ``hours``: not known at prediction time, so never
a static feature), ``empty parameter``, ``unknown parameter`` or ``blank line``. Two different values of one variable at the same minute are both kept
(e.g. two urine outputs). Events after the prediction time are **not** dropped here: they stay in the table and
:meth:`~healthfusion.data.cohort.Cohort.observable` hides them from every feature builder. Table
``"Outcomes-<x>.txt"`` counts outcome rows used, or dropped as ``no record file`` when their record is not in the
set.

Example::

    cohort = build("data/physionet2012/set-a.tar.gz")      # finds Outcomes-a.txt beside it
    cohort.label("in_hospital_death").mean()                # 0.1385
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.plausibility import PLAUSIBLE_RANGES, drop_implausible
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.data.sources.itemmap import UNKNOWN, age_group
from healthfusion.data.sources.physionet2012_records import RecordFiles, iter_record_files, record_set_name
from healthfusion.data.sources.read_errors import reading
from healthfusion.files import display_path

log = logging.getLogger(__name__)

DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
TIME_SERIES = (
    "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine", "DiasABP", "FiO2", "GCS",
    "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP", "MechVent", "Na", "NIDiasABP", "NIMAP", "NISysABP",
    "PaCO2", "PaO2", "pH", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT", "Urine",
    "WBC", "Weight",
)
# ICUType code -> care unit; the full names are 1 Coronary Care Unit, 2 Cardiac Surgery Recovery Unit,
# 3 Medical ICU, 4 Surgical ICU.
ICU_TYPES = {1: "CCU", 2: "CSRU", 3: "MICU", 4: "SICU"}
GENDERS = {0: "F", 1: "M"}
OUTCOME_COLUMNS = ("RecordID", "SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death")
MISSING_CODE = -1.0

LABELS = (
    LabelSpec("in_hospital_death", "binary", description="Died in hospital (PhysioNet 2012 challenge label)."),
    LabelSpec("length_of_stay", "regression", description="Length of stay in days (Length_of_stay)."),
    LabelSpec(
        "survival_days", "regression",
        description="Days from ICU admission to death (Survival); empty when not known to have died (censored).",
    ),
    LabelSpec(
        "saps_i", "regression",
        description="SAPS-I severity score (challenge outcomes): a reference clinical baseline, not a feature.",
    ),
    LabelSpec("sofa", "regression", description="SOFA score (challenge outcomes): a reference clinical baseline, not a feature."),
)


def build(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
    outcomes: str | Path | bool | None = None,
    hours: float = 48.0,
) -> Cohort:
    """Read one PhysioNet 2012 set into a :class:`~healthfusion.data.cohort.Cohort`.

    Parameters
    ----------
    path : str or Path
        A set folder (``set-a/`` with ``<RecordID>.txt`` files) or its archive (``set-a.tar.gz``, ``.tgz``, ``.tar``).
    task : str, optional
        A label name the caller needs (e.g. ``"in_hospital_death"``); checked to exist, nothing else changes.
    progress : bool, default False
        Log progress while reading record files.
    outcomes : path, None or False, default None
        The outcomes file. ``None`` uses ``Outcomes-<x>.txt`` beside ``set-<x>`` when it exists (no labels
        otherwise); ``False`` reads no outcomes (a cohort to predict on).
    hours : float, default 48
        Prediction time in hours since ICU admission, the same for every stay.

    Returns
    -------
    Cohort
        Tables stays, static, events and (with outcomes) labels; see the module docstring.

    Raises
    ------
    SourceError
        If the set or outcomes file is missing; a record file is empty, lacks the ``Time,Parameter,Value`` header,
        has an unparseable time or value (naming file and line) or a RecordID that differs from its file name;
        an outcomes file lacks a column, repeats a RecordID or has a label value that is not allowed
        (naming file and line); ``task`` is not a label of the cohort; ``hours`` is not positive.
    """
    path = Path(path)
    if isinstance(hours, bool) or not isinstance(hours, numbers.Real) or not hours > 0:
        raise SourceError(f"hours must be a positive number of hours since ICU admission; got {hours!r}.")
    set_name = record_set_name(path)
    table = f"{set_name}/*.txt"
    acc = RowAccounting()

    files = RecordFiles(iter_record_files(path, progress))
    lines = files.parse()
    acc.read(table, len(lines))
    blank = lines["time"].isna() & lines["param"].isna() & lines["value"].isna()
    acc.drop(table, "blank line", int(blank.sum()))
    lines = lines[~blank]
    lines["time"] = files.hours(lines)
    lines["value"] = files.values(lines)

    is_desc = lines["param"].isin(DESCRIPTORS[:-1])
    # the admission weight is the record's first Weight row when it is at 00:00; later rows are time series
    weight = lines["param"].eq("Weight")
    first_weight = weight & ~lines["rec"].where(weight).duplicated()
    is_desc |= first_weight & lines["time"].eq(0.0)
    # a descriptor recorded after the prediction time is not known then: it must not become a static feature
    late = is_desc & lines["time"].gt(hours)
    if late.any():
        log.warning("%s: dropped %d descriptor row(s) recorded after the prediction time (%g h)", table,
                    int(late.sum()), hours)
    acc.drop(table, "descriptor after prediction time", int(late.sum()))
    static = _static(lines[is_desc & ~late], files, acc, table)

    series = lines[~is_desc]
    empty = series["param"].isna()
    if empty.any():
        log.warning("%s: dropped %d row(s) with an empty Parameter field (first at %s)", table, int(empty.sum()),
                    files.where(series.index[np.flatnonzero(empty.to_numpy())[0]]))
    acc.drop(table, "empty parameter", int(empty.sum()))
    series = series[~empty]
    known = series["param"].isin(TIME_SERIES)
    if not known.all():
        unknown = series.loc[~known, "param"].astype(str).value_counts()
        log.warning("%s: dropped %d row(s) with unknown parameters %s", table, int((~known).sum()),
                    {name: int(n) for name, n in unknown.head(10).items()})
    acc.drop(table, "unknown parameter", int((~known).sum()))
    series = series[known]
    dup = _duplicated(series)
    acc.drop(table, "duplicate row", int(dup.sum()))
    series = series[~dup]
    events = pd.DataFrame({
        "stay_id": series["rec"].to_numpy(),
        "time": series["time"].to_numpy(),
        "variable": series["param"].cat.remove_unused_categories().array,
        "value": series["value"].where(series["value"] != MISSING_CODE).to_numpy(),
    })
    events = drop_implausible(events, acc, table)  # a categorical variable keeps this fast
    events["stay_id"] = _decode(events["stay_id"].to_numpy(), files.ids)
    events["variable"] = _decode(events["variable"].cat.codes.to_numpy(), events["variable"].cat.categories)
    acc.use(table, len(events))

    stays = pd.DataFrame({
        "stay_id": files.ids,
        "patient_id": files.ids,
        "prediction_time": float(hours),
        "care_unit": static["ICUType"].fillna(UNKNOWN).to_numpy(),
        "age_group": age_group(static["Age"]).to_numpy(),
        "sex": static["Gender"].fillna(UNKNOWN).to_numpy(),
    })
    meta = CohortMeta(
        name=f"physionet2012-{set_name}",
        source="physionet2012",
        feature_types={"Age": "numeric", "Gender": "categorical", "Height": "numeric", "ICUType": "categorical",
                       "Weight": "numeric"},
        derived={"care_unit": ["ICUType"], "age_group": ["Age"], "sex": ["Gender"]},
        description=f"PhysioNet/CinC Challenge 2012 {set_name}: ICU stays, prediction at {hours:g} h.",
    )
    labels = None
    outcome_path = _outcomes_path(path, set_name, outcomes)
    if outcome_path is not None:
        labels = _read_outcomes(outcome_path, files.ids, acc)
        meta.labels = list(LABELS)
    _check_task(task, meta, path)
    acc.check()
    log.info("%s: %d stays, %d events, labels: %s", table, len(stays), len(events),
             "none" if labels is None else outcome_path.name)
    return Cohort(stays, static=static, events=events, labels=labels, meta=meta, accounting=acc)


def _duplicated(rows: pd.DataFrame) -> np.ndarray:
    """Rows repeating an earlier row's record, time, parameter and value (an integer key finds candidates fast)."""
    minutes = np.rint(rows["time"].to_numpy() * 60).astype("int64")
    param = rows["param"].cat.codes.to_numpy().astype("int64")
    key = (rows["rec"].to_numpy() * (minutes.max(initial=0) + 1) + minutes) * (param.max(initial=0) + 1) + param
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    candidates = np.zeros(len(rows), dtype=bool)
    candidates[order[1:][same]] = True
    candidates[order[:-1][same]] = True
    dup = np.zeros(len(rows), dtype=bool)
    if candidates.any():
        dup[candidates] = rows[candidates].duplicated(["rec", "time", "param", "value"]).to_numpy()
    return dup


def _decode(codes: np.ndarray, categories) -> pd.Series:
    """``categories[codes]`` as a string Series, decoded by Arrow (much faster than via Python objects)."""
    array = pa.DictionaryArray.from_arrays(pa.array(codes.astype("int32")), pa.array([str(c) for c in categories]))
    return pd.Series(pd.array(array.cast(pa.string()), dtype="str"))


def _static(desc: pd.DataFrame, files: RecordFiles, acc: RowAccounting, table: str) -> pd.DataFrame:
    """Descriptor rows -> one static row per record (records without a descriptor get empty values)."""
    dup = desc.duplicated(["rec", "param"])
    acc.drop(table, "duplicate descriptor", int(dup.sum()))
    desc = desc[~dup]
    missing = desc["value"].isna() | desc["value"].eq(MISSING_CODE)
    acc.drop(table, "missing value", int(missing.sum()))
    desc = desc[~missing]

    rec_id = desc[desc["param"] == "RecordID"]
    mismatch = rec_id["value"].to_numpy() != files.ids[rec_id["rec"].to_numpy()].astype(float)
    if mismatch.any():
        i = int(np.flatnonzero(mismatch)[0])
        raise SourceError(
            f"{files.where(rec_id.index[i]).capitalize()}: RecordID {rec_id['value'].iloc[i]:g} differs from the "
            f"file name; each file must be named <RecordID>.txt."
        )
    for param, allowed in (("ICUType", ICU_TYPES), ("Gender", GENDERS)):
        rows = desc[desc["param"] == param]
        bad = ~rows["value"].isin(list(allowed))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise SourceError(
                f"{files.where(rows.index[i]).capitalize()}: {param} {rows['value'].iloc[i]:g} is not one of "
                f"{sorted(allowed)} (or -1 for missing)."
            )
    wide = desc.pivot(index="rec", columns="param", values="value").reindex(
        index=np.arange(len(files.ids)), columns=list(DESCRIPTORS)
    )
    n_implausible = 0
    for col in ("Age", "Height", "Weight"):
        low, high, _unit = PLAUSIBLE_RANGES[col]
        bad = wide[col].notna() & ~wide[col].between(low, high)
        n_implausible += int(bad.sum())
        wide.loc[bad, col] = np.nan
    acc.drop(table, "implausible value", n_implausible)
    acc.use(table, len(desc) - n_implausible)
    return pd.DataFrame({
        "stay_id": files.ids,
        "Age": wide["Age"].to_numpy(),
        "Gender": wide["Gender"].map(GENDERS).to_numpy(dtype=object),
        "Height": wide["Height"].to_numpy(),
        "ICUType": wide["ICUType"].map(ICU_TYPES).to_numpy(dtype=object),
        "Weight": wide["Weight"].to_numpy(),
    })


# ---------------------------------------------------------------------------------------------- outcomes
def _outcomes_path(path: Path, set_name: str, outcomes) -> Path | None:
    if outcomes is False:
        return None
    if outcomes is not None:
        p = Path(outcomes)
        if not p.is_file():
            raise SourceError(f"Outcomes file {p} does not exist; pass its path, or outcomes=False for no labels.")
        return p
    suffix = set_name.split("-", 1)[1] if set_name.startswith("set-") else None
    candidate = path.parent / f"Outcomes-{suffix}.txt" if suffix else None
    if candidate is not None and candidate.is_file():
        return candidate
    looked = f" (looked for {candidate.name})" if candidate is not None else ""
    log.warning("%s: no outcomes file beside it%s: the cohort has no labels. Pass outcomes=PATH (--option "
                "outcomes=PATH) to label it, or outcomes=False when none is wanted.", display_path(path), looked)
    return None


def _read_outcomes(path: Path, ids: np.ndarray, acc: RowAccounting) -> pd.DataFrame:
    table = path.name
    try:
        with reading(path):
            raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"Outcomes file {path} is empty; expected columns {list(OUTCOME_COLUMNS)}.") from exc
    except pd.errors.ParserError as exc:
        raise SourceError(f"Outcomes file {path} could not be read as CSV: {exc}.") from exc
    raw.columns = [c.strip() for c in raw.columns]
    missing = [c for c in OUTCOME_COLUMNS if c not in raw.columns]
    if missing:
        raise SourceError(f"Outcomes file {path} lacks column(s) {missing}; it has {list(raw.columns)}.")
    acc.read(table, len(raw))
    num = {}
    for col in OUTCOME_COLUMNS:
        text = raw[col].str.strip()
        num[col] = pd.to_numeric(text, errors="coerce")
        bad = num[col].isna() & text.ne("")
        if col == "In-hospital_death":
            bad = ~text.isin(["0", "1"])
        elif col == "RecordID":
            bad = num[col].isna() | (num[col] % 1 != 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            expected = {"In-hospital_death": "0 or 1", "RecordID": "an integer record id"}.get(col, "a number")
            raise SourceError(
                f"Outcomes file {path}, line {i + 2}: {col} is {raw[col].iloc[i]!r}; expected {expected}."
            )
    rec = num["RecordID"].astype("int64").astype(str)
    dup = rec.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise SourceError(f"Outcomes file {path}, line {i + 2}: RecordID {rec.iloc[i]} appears more than once.")
    known = rec.isin(pd.Index(ids))
    acc.drop(table, "no record file", int((~known).sum()))
    acc.use(table, int(known.sum()))
    if not known.all():
        log.warning("%s: %d outcome row(s) have no record file in the set", display_path(table), int((~known).sum()))

    def value(col: str) -> pd.Series:
        return num[col].where(num[col] != MISSING_CODE)

    out = pd.DataFrame({
        "stay_id": rec,
        "in_hospital_death": num["In-hospital_death"],
        "length_of_stay": value("Length_of_stay"),
        "survival_days": value("Survival"),
        "saps_i": value("SAPS-I"),
        "sofa": value("SOFA"),
    })[known.to_numpy()]
    labels = out.set_index("stay_id").reindex(pd.Index(ids, name="stay_id")).reset_index()
    n_unlabelled = int(labels["in_hospital_death"].isna().sum())
    if n_unlabelled:
        log.warning("%s: %d record(s) have no outcome row; their labels are empty", table, n_unlabelled)
    return labels


def _check_task(task: str | None, meta: CohortMeta, path: Path) -> None:
    if task is None:
        return
    names = [spec.name for spec in meta.labels]
    if task not in names:
        hint = " (no outcomes file was read; pass outcomes=PATH)" if not names else ""
        raise SourceError(f"Task {task!r} is not a label of the cohort built from {path}; labels: {names}{hint}.")
