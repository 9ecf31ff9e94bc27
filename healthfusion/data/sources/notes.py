"""Clinical notes: a generic notes table (:func:`build`) and the MTSamples transcriptions (:func:`build_mtsamples`).

Generic notes table
-------------------
A CSV or Parquet file with one row per note: the stay it belongs to (``id``), its ``time`` in hours since
admission and its ``text``; optionally a ``patient_id`` and a per-stay label column. Each distinct id is a stay.

The prediction time must be given: ``prediction_time=HOURS`` (every stay) or ``prediction_time_column=COLUMN`` (a
per-stay column of the table). There is no default: a stay's last note is often its discharge summary, which states
the outcome, so making every note visible would leak the label. Notes after a stay's prediction time stay in the
cohort (counted as used) and are hidden from every feature builder by
:meth:`~healthfusion.data.cohort.Cohort.observable`.

MTSamples
---------
The MTSamples crawl (``mtsamples_2018crawl.csv.gz``: ``sample_id``, ``medical_specialty``, ``transcription``, ...)
lists a sample once under its own specialty and again under generic categories (``Surgery``, ``Consult - History
and Phy.``, ``Discharge Summary`` ...). The reader keeps **one stay per sample** (the other rows are counted as
``duplicate sample (listed under another specialty)``), so no text appears twice with different labels. Labels:

``specialty``    multiclass: the sample's most specific category: categories other than the generic ones in
                 :data:`GENERIC_CATEGORIES` first, then the one with the fewest samples in the file (ties
                 alphabetical). A specialty given to fewer than ``min_class_size`` samples is rare: its samples
                 take their next category that is not rare, or ``"Other"`` when they have none (the label
                 description says which specialties and how many samples).
``specialties``  multilabel: every category the sample is listed under (nothing folded).

Each sample is its own patient, except that samples with identical text share a ``patient_id`` so that
patient-level splits keep them together. Notes are at time 0 and the prediction time is 0.

Example::

    cohort = build_mtsamples("data/mtsamples/mtsamples_2018crawl.csv.gz", min_class_size=20)
    cohort.label("specialty").value_counts()
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.data.sources.image_folder import label_from_column
from healthfusion.data.sources.io import read_table

log = logging.getLogger(__name__)

# MTSamples categories that describe the kind of document, not the clinical specialty
GENERIC_CATEGORIES = (
    "Surgery", "Consult - History and Phy.", "Discharge Summary", "SOAP / Chart / Progress Notes", "Office Notes",
    "Letters", "Emergency Room Reports", "IME-QME-Work Comp etc.",
)
MTSAMPLES_COLUMNS = ("sample_id", "medical_specialty", "transcription")
OTHER = "Other"


def build(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
    id_column: str = "id",
    time_column: str = "time",
    text_column: str = "text",
    patient_column: str | None = None,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
    prediction_time: float | None = None,
    prediction_time_column: str | None = None,
) -> Cohort:
    """Read a notes table into a cohort with one stay per distinct id.

    Parameters
    ----------
    path : str or Path
        CSV (optionally gzipped) or Parquet file, one row per note.
    task : str, optional
        The label's name (``label_column``) or None.
    progress : bool, default False
        Unused (a single read); accepted for the common source signature.
    id_column, time_column, text_column : str, default "id", "time", "text"
        Columns with the stay id, the note time (hours since admission, a number) and the note text.
    patient_column : str, optional
        Column with patient ids; by default each stay is its own patient.
    label_column : str, optional
        A per-stay label (the same value on every note of a stay); its kind is inferred as in
        :func:`~healthfusion.data.sources.image_folder.label_from_column`.
    classes : sequence of str, optional
        Allowed values of the label (a multiclass label); any other raises.
    prediction_time : float, optional
        The prediction time of every stay, in hours since admission.
    prediction_time_column : str, optional
        Column with each stay's prediction time in hours (the same on every note of a stay; empty on some notes
        is allowed). Exactly one of ``prediction_time`` and ``prediction_time_column`` is required.

    Raises
    ------
    SourceError
        If neither or both prediction-time options are given; the file or a column is missing; a time is empty or
        not a number (naming the line); a stay has conflicting labels, patient ids or prediction times, or no
        prediction time; a label is not in ``classes``; ``task`` is not the label.
    """
    del progress
    path = Path(path)
    if (prediction_time is None) == (prediction_time_column is None):
        given = "both" if prediction_time is not None else "neither"
        raise SourceError(
            f"Notes file {path}: give the prediction time as exactly one of prediction_time=HOURS (every stay) or "
            f"prediction_time_column=COLUMN (per stay); got {given}. There is no default, because a stay's last "
            "note (often its discharge summary) must not be an input. On the command line: --option "
            "prediction_time=24; in a run config: data.options.prediction_time."
        )
    if prediction_time is not None and not (isinstance(prediction_time, numbers.Real)
                                            and not isinstance(prediction_time, bool) and prediction_time >= 0):
        raise SourceError(f"prediction_time must be a number of hours >= 0; got {prediction_time!r}.")
    required = [id_column, time_column, text_column] + [
        c for c in (patient_column, label_column, prediction_time_column) if c]
    df = read_table(path, required=required, dtypes=str if path.suffix != ".parquet" else None)
    if task is not None and task != label_column:
        raise SourceError(f"Task {task!r} is not a label of this notes cohort; labels: "
                          f"{[label_column] if label_column else []} (pass label_column=).")
    table = path.name
    acc = RowAccounting()
    acc.read(table, len(df))
    df = df.reset_index(drop=True)

    def where(i: int) -> str:
        return f"File {path}, line {i + 2}"

    ids = df[id_column].astype(object).where(df[id_column].notna(), None)
    missing_id = ids.isna() | ids.astype(str).str.strip().eq("")
    if missing_id.any():
        raise SourceError(f"{where(int(np.flatnonzero(missing_id.to_numpy())[0]))}: {id_column!r} is empty.")
    times = pd.to_numeric(df[time_column], errors="coerce")
    bad = times.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceError(
            f"{where(i)}: {time_column} {df[time_column].iloc[i]!r} is not a number; expected hours since "
            "admission (e.g. 12.5)."
        )
    notes = pd.DataFrame({"stay_id": ids.astype(str).str.strip(), "time": times.astype(float),
                          "text": df[text_column].astype(object)}, index=df.index)
    empty = notes["text"].isna() | notes["text"].astype(str).str.strip().eq("")
    acc.drop(table, "empty text", int(empty.sum()))
    dup = notes.duplicated(["stay_id", "time", "text"]) & ~empty
    acc.drop(table, "duplicate row", int(dup.sum()))
    keep = ~empty & ~dup
    acc.use(table, int(keep.sum()))

    stay_ids = pd.Index(notes["stay_id"].unique())
    per_stay = pd.DataFrame({"stay_id": notes["stay_id"]}, index=df.index)
    if patient_column:
        per_stay["patient_id"] = df[patient_column]
    if label_column:
        per_stay["label"] = df[label_column]
    if prediction_time_column:
        cut = pd.to_numeric(df[prediction_time_column], errors="coerce")
        bad = cut.isna() & df[prediction_time_column].notna() & df[prediction_time_column].astype(str).str.strip().ne("")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise SourceError(f"{where(i)}: {prediction_time_column} {df[prediction_time_column].iloc[i]!r} is not a "
                              "number; expected the stay's prediction time in hours since admission.")
        per_stay["cutoff"] = cut
    for col in [c for c in ("patient_id", "label", "cutoff") if c in per_stay]:
        n = per_stay.dropna(subset=[col]).groupby("stay_id")[col].nunique()
        if (n > 1).any():
            name = {"cutoff": prediction_time_column}.get(col, col)
            raise SourceError(f"File {path}: stay {n[n > 1].index[0]!r} has more than one {name} value; "
                              "a stay has one patient, one label and one prediction time.")
    first = per_stay.groupby("stay_id", sort=False).first().reindex(stay_ids)
    patients = first["patient_id"].fillna(pd.Series(stay_ids, index=stay_ids)) if patient_column else stay_ids
    notes = notes[keep].reset_index(drop=True)
    if prediction_time_column:
        cutoff = first["cutoff"]
        if cutoff.isna().any():
            raise SourceError(f"File {path}: stay {cutoff.index[cutoff.isna()][0]!r} has no {prediction_time_column} "
                              "value on any of its notes; every stay needs its prediction time.")
        cutoff = cutoff.to_numpy(dtype=float)
    else:
        cutoff = float(prediction_time)
    stays = pd.DataFrame({"stay_id": stay_ids, "patient_id": np.asarray(patients, dtype=object),
                          "prediction_time": cutoff})
    meta = CohortMeta(name=f"notes-{path.name.split('.')[0]}", source="notes",
                      description=f"Notes of {path.name}, one stay per {id_column}.")
    labels = None
    if label_column:
        first_row = per_stay.reset_index().groupby("stay_id", sort=False)["index"].first().reindex(stay_ids)
        values, spec = label_from_column(
            pd.Series(first["label"].to_numpy(), index=first_row.to_numpy()), label_column, where, classes
        )
        labels = pd.DataFrame({"stay_id": stay_ids, label_column: values.to_numpy()})
        meta.labels = [spec]
    acc.check()
    return Cohort(stays, notes=notes, labels=labels, meta=meta, accounting=acc)


def build_mtsamples(
    path: str | Path,
    *,
    task: str | None = None,
    progress: bool = False,
    min_class_size: int = 1,
) -> Cohort:
    """Read the MTSamples crawl into a notes cohort with one stay per sample and specialty labels.

    Parameters
    ----------
    path : str or Path
        ``mtsamples_2018crawl.csv.gz`` or the folder holding it.
    task : str, optional
        ``"specialty"``, ``"specialties"`` or None.
    progress : bool, default False
        Unused (a single read); accepted for the common source signature.
    min_class_size : int, default 1
        Specialties with fewer samples than this become ``"Other"`` in the ``specialty`` label (1 folds nothing).

    Raises
    ------
    SourceError
        If the file or a column is missing, a sample id is empty or not a whole number, one sample has two
        different texts, ``min_class_size`` is not a positive integer, or ``task`` is not a label.
    """
    del progress
    if isinstance(min_class_size, bool) or not isinstance(min_class_size, (int, np.integer)) or min_class_size < 1:
        raise SourceError(f"min_class_size must be a positive integer; got {min_class_size!r}.")
    if task not in (None, "specialty", "specialties"):
        raise SourceError(f"Task {task!r} is not a label of the MTSamples cohort; labels: 'specialty', 'specialties'.")
    path = _mtsamples_file(Path(path))
    df = read_table(path, required=MTSAMPLES_COLUMNS, dtypes=str)
    table = path.name
    acc = RowAccounting()
    acc.read(table, len(df))
    df = df.reset_index(drop=True)
    sample = pd.to_numeric(df["sample_id"], errors="coerce")
    bad = sample.isna() | (sample % 1 != 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise SourceError(f"File {path}, line {i + 2}: sample_id {df['sample_id'].iloc[i]!r} is not a whole number.")
    df["sample_id"] = sample.astype("int64").astype(str)
    df["medical_specialty"] = df["medical_specialty"].fillna("").str.strip()
    no_specialty = df["medical_specialty"].eq("")
    if no_specialty.any():
        i = int(np.flatnonzero(no_specialty.to_numpy())[0])
        raise SourceError(f"File {path}, line {i + 2}: medical_specialty is empty; every sample needs one.")
    texts = df.groupby("sample_id")["transcription"].nunique()
    if (texts > 1).any():
        sid = texts[texts > 1].index[0]
        lines = (np.flatnonzero(df["sample_id"].eq(sid).to_numpy()) + 2).tolist()
        raise SourceError(f"File {path}: sample {sid} has different texts on lines {lines}; keep one text per sample.")
    empty = df["transcription"].isna() | df["transcription"].str.strip().eq("")
    acc.drop(table, "empty text", int(empty.sum()))
    df = df[~empty]

    acc.drop(table, "duplicate sample (listed under another specialty)", int(df["sample_id"].duplicated().sum()))
    acc.use(table, int(df["sample_id"].nunique()))
    chosen = _most_specific(df)
    counts = chosen.value_counts()
    rare = sorted(counts.index[counts < min_class_size])
    if rare:  # a sample of a rare specialty takes another of its categories that is not rare, else Other
        kept_classes = set(counts.index[counts >= min_class_size])
        chosen = _most_specific(df, avoid=sorted(set(df["medical_specialty"]) - kept_classes))
        chosen = chosen.where(chosen.isin(kept_classes), OTHER)
    specialty = chosen
    kept = df.drop_duplicates("sample_id").set_index("sample_id").loc[specialty.index].reset_index()
    specialties = df.groupby("sample_id")["medical_specialty"].agg(lambda s: sorted(set(s)))
    classes = tuple(sorted(specialty.unique()))
    all_classes = tuple(sorted(df["medical_specialty"].unique()))
    description = (
        "Most specific MTSamples category of the sample (categories other than the generic document types first, "
        "then the one with the fewest samples)."
    )
    if rare:
        n_other = int((specialty == OTHER).sum())
        description += (f" {OTHER!r} holds {n_other} samples whose categories all had fewer than {min_class_size} "
                        f"samples: {', '.join(rare)}.")
        log.info("%s: folded %d specialties (%d samples) into %r", table, len(rare), n_other, OTHER)

    ids = kept["sample_id"].to_numpy(dtype=object)
    # samples with identical text are one "patient", so patient-level splits keep them together
    patient = kept.groupby("transcription")["sample_id"].transform("first").to_numpy(dtype=object)
    stays = pd.DataFrame({"stay_id": ids, "patient_id": patient, "prediction_time": 0.0})
    notes = pd.DataFrame({"stay_id": ids, "time": 0.0, "text": kept["transcription"].to_numpy(dtype=object)})
    labels = pd.DataFrame({
        "stay_id": ids,
        "specialty": specialty.to_numpy(dtype=object),
        "specialties": [list(specialties[s]) for s in ids],
    })
    meta = CohortMeta(
        name="mtsamples",
        source="mtsamples",
        labels=[
            LabelSpec("specialty", "multiclass", classes, description=description),
            LabelSpec("specialties", "multilabel", all_classes,
                      description="Every MTSamples category the sample is listed under."),
        ],
        description="MTSamples transcriptions (2018 crawl), one stay per sample, note at time 0.",
    )
    acc.check()
    log.info("%s: %d samples, %d specialties", table, len(stays), len(classes))
    return Cohort(stays, notes=notes, labels=labels, meta=meta, accounting=acc)


def _most_specific(df: pd.DataFrame, avoid: Sequence[str] = ()) -> pd.Series:
    """Per sample (index, in numeric order): its category, ranked by not in ``avoid``, not generic, fewest samples
    in the file, then name."""
    size = df.groupby("medical_specialty")["sample_id"].nunique()
    ranked = df.assign(
        avoided=df["medical_specialty"].isin(list(avoid)),
        generic=df["medical_specialty"].isin(GENERIC_CATEGORIES),
        size=df["medical_specialty"].map(size),
        number=df["sample_id"].astype("int64"),
    ).sort_values(["number", "avoided", "generic", "size", "medical_specialty"], kind="stable")
    first = ranked[~ranked["sample_id"].duplicated()]
    return pd.Series(first["medical_specialty"].to_numpy(), index=pd.Index(first["sample_id"], name="sample_id"))


def _mtsamples_file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("mtsamples*.csv*"))
        if not found:
            raise SourceError(f"Folder {path} holds no mtsamples*.csv(.gz) file; pass the MTSamples CSV.")
        return found[0]
    if not path.is_file():
        raise SourceError(f"MTSamples file {path} does not exist; pass mtsamples_2018crawl.csv.gz or its folder.")
    return path
