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
``static``  the general descriptors at time 00:00: ``Age``, ``Gender`` (F/M, categorical), ``Height`` (cm),
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
``unknown parameter`` or ``blank line``. Two different values of one variable at the same minute are both kept
(e.g. two urine outputs). Events after the prediction time are **not** dropped here: they stay in the table and
:meth:`~healthfusion.data.cohort.Cohort.observable` hides them from every feature builder. Table
``"Outcomes-<x>.txt"`` counts outcome rows used, or dropped as ``no record file`` when their record is not in the
set.

Example::

    cohort = build("data/physionet2012/set-a.tar.gz")      # finds Outcomes-a.txt beside it
    cohort.label("in_hospital_death").mean()                # 0.1385
"""

from __future__ import annotations

import io
import logging
import numbers
import re
import tarfile
from collections.abc import Iterator
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

log = logging.getLogger(__name__)

HEADER = "Time,Parameter,Value"
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
_TIME = re.compile(r"^\s*(\d+):(\d{2})\s*$")


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
    set_name = _set_name(path)
    table = f"{set_name}/*.txt"
    acc = RowAccounting()

    files = _RecordFiles(_iter_record_files(path, progress))
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
    static = _static(lines[is_desc], files, acc, table)

    series = lines[~is_desc]
    known = series["param"].isin(TIME_SERIES)
    if not known.all():
        unknown = series.loc[~known, "param"].value_counts()
        log.warning("%s: dropped %d row(s) with unknown parameters %s", table, int((~known).sum()),
                    dict(unknown.head(10)))
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


# ---------------------------------------------------------------------------------------------- record files
def _set_name(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _iter_record_files(path: Path, progress: bool) -> Iterator[tuple[str, str, bytes]]:
    """(display name, RecordID, bytes) of every ``<RecordID>.txt`` of a set folder or archive."""
    if path.is_dir():
        files = sorted(p for p in path.glob("*.txt") if p.stem.isdigit())
        if not files:
            found = sorted(p.name for p in path.iterdir())[:8]
            raise SourceError(
                f"Folder {path} holds no PhysioNet 2012 record files (<RecordID>.txt); it has {found}. "
                "Pass a set folder such as set-a/ or its archive set-a.tar.gz."
            )
        for i, p in enumerate(files):
            if progress and i % 1000 == 0:
                log.info("%s: reading record %d of %d", path.name, i + 1, len(files))
            yield str(p), p.stem, p.read_bytes()
        return
    if not path.is_file():
        raise SourceError(
            f"{path} does not exist; pass a PhysioNet 2012 set folder (set-a/) or archive (set-a.tar.gz)."
        )
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"{path} is not a readable tar archive ({exc}); pass set-a/ or set-a.tar.gz.") from exc
    n = 0
    with archive:
        try:
            for member in archive:
                stem = Path(member.name).stem
                if not (member.isfile() and member.name.endswith(".txt") and stem.isdigit()):
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                if progress and n % 1000 == 0:
                    log.info("%s: reading record %d", path.name, n + 1)
                n += 1
                yield f"{path}:{member.name}", stem, handle.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise SourceError(f"{path} is truncated or corrupt ({exc}); download the archive again.") from exc
    if n == 0:
        raise SourceError(f"Archive {path} holds no <RecordID>.txt record files; is it a PhysioNet 2012 set?")


class _RecordFiles:
    """All record files of a set concatenated (headers removed) into one CSV buffer, parsed in a single pass."""

    def __init__(self, files: Iterator[tuple[str, str, bytes]]):
        bodies, names, ids, n_lines = [], [], [], []
        seen: dict[str, str] = {}
        for name, stem, raw in files:
            if stem in seen:
                raise SourceError(f"Record {stem} appears twice: {seen[stem]} and {name}. Keep one of them.")
            seen[stem] = name
            text = raw.replace(b"\r\n", b"\n").rstrip(b"\n")
            if not text.strip():
                raise SourceError(f"Record file {name} is empty; expected a '{HEADER}' header and descriptor rows.")
            header, _, body = text.partition(b"\n")
            if header.strip().decode("utf-8", "replace") != HEADER:
                raise SourceError(
                    f"Record file {name}, line 1: expected the header {HEADER!r}, got "
                    f"{header[:60].decode('utf-8', 'replace')!r}."
                )
            if not body:
                raise SourceError(f"Record file {name} has a header but no rows; expected at least the descriptors.")
            bodies.append(body)
            names.append(name)
            ids.append(stem)
            n_lines.append(body.count(b"\n") + 1)
        self.names = names
        self.ids = np.array(ids, dtype=object)
        self._buffer = b"\n".join(bodies)
        self._n_lines = np.asarray(n_lines, dtype="int64")
        self._starts = np.concatenate([[0], np.cumsum(self._n_lines)])

    def where(self, row: int) -> str:
        """'file F, line L' of buffer row ``row`` (0-based)."""
        rec = int(np.searchsorted(self._starts, row, side="right") - 1)
        return f"record file {self.names[rec]}, line {row - self._starts[rec] + 2}"

    def parse(self) -> pd.DataFrame:
        """One row per data line: ``rec`` (file index), ``time``, ``param``, ``value`` (blank lines kept as NaN)."""
        try:
            df = pd.read_csv(
                io.BytesIO(self._buffer), header=None, names=["time", "param", "value"],
                dtype={"time": "category", "param": "category", "value": "category"},
                skip_blank_lines=False, keep_default_na=False, na_values=[""],
            )
        except pd.errors.ParserError as exc:
            found = re.search(r"line (\d+), saw (\d+)", str(exc))
            if not found:
                raise SourceError(f"Record files could not be parsed as '{HEADER}' CSV: {exc}.") from exc
            raise SourceError(
                f"{self.where(int(found.group(1)) - 1).capitalize()}: expected 3 comma-separated fields "
                f"({HEADER}), got {found.group(2)}."
            ) from exc
        if len(df) != self._starts[-1]:  # cannot happen unless a quoted field spans lines
            raise SourceError(f"Record files have {self._starts[-1]} lines but {len(df)} rows; is a value quoted?")
        df.insert(0, "rec", np.repeat(np.arange(len(self.names), dtype="int64"), self._n_lines))
        df.index = np.arange(len(df))  # the buffer row, for error messages
        return df

    def hours(self, lines: pd.DataFrame) -> pd.Series:
        """``hh:mm`` -> hours, parsed once per distinct string; a bad one raises naming file and line."""
        times = lines["time"]
        cats = times.cat.categories
        parsed = np.full(len(cats), np.nan)
        for i, text in enumerate(cats):
            m = _TIME.match(str(text))
            if m and int(m.group(2)) < 60:
                parsed[i] = int(m.group(1)) + int(m.group(2)) / 60.0
        codes = times.cat.codes.to_numpy()
        out = np.where(codes >= 0, parsed[codes], np.nan)
        bad = np.isnan(out)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            got = "an empty time" if pd.isna(times.iloc[i]) else f"time {times.iloc[i]!r}"
            raise SourceError(
                f"{self.where(lines.index[i]).capitalize()}: cannot parse {got}; "
                "expected hh:mm since ICU admission, e.g. 07:35."
            )
        return pd.Series(out, index=lines.index)

    def values(self, lines: pd.DataFrame) -> pd.Series:
        """Values as floats (empty -> NaN); a non-numeric value raises naming file and line."""
        values = lines["value"]
        cats = values.cat.categories
        parsed = pd.to_numeric(pd.Series(np.asarray(cats, dtype=object)), errors="coerce").to_numpy(dtype=float)
        codes = values.cat.codes.to_numpy()
        out = np.where(codes >= 0, parsed[np.maximum(codes, 0)], np.nan)
        bad = (codes >= 0) & np.isnan(out)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SourceError(
                f"{self.where(lines.index[i]).capitalize()}: value {values.iloc[i]!r} of {lines['param'].iloc[i]} "
                "is not a number; fix or remove the line (use -1 or leave it empty for missing)."
            )
        return pd.Series(out, index=lines.index)


def _static(desc: pd.DataFrame, files: _RecordFiles, acc: RowAccounting, table: str) -> pd.DataFrame:
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
    log.info("%s: no outcomes file found beside it; building a cohort without labels.", path)
    return None


def _read_outcomes(path: Path, ids: np.ndarray, acc: RowAccounting) -> pd.DataFrame:
    table = path.name
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise SourceError(f"Outcomes file {path} is empty; expected columns {list(OUTCOME_COLUMNS)}.") from exc
    except (ValueError, OSError) as exc:
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
        log.warning("%s: %d outcome row(s) have no record file in the set", table, int((~known).sum()))

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
