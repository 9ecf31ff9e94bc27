"""Write a cohort as a MEDS dataset (schema 0.4) that :func:`healthfusion.data.sources.meds.build` reads back.

Layout written under ``out``::

    data/<split>/<n>.parquet          subject_id, time, code, numeric_value, text_value, stay_id (+ patient_id)
    metadata/codes.parquet            every code once, with a description
    metadata/subject_splits.parquet   subject_id, split (train / tuning / held_out, patient-level)
    metadata/dataset.json             dataset name, ETL name/version, MEDS version, extension columns
    metadata/healthfusion.json        the cohort's label specs, feature types and derived columns (exact read-back)
    task_labels/<label>/0.parquet     subject_id, prediction_time, one value column per label
                                      (a cohort without labels: task_labels/prediction_times/, no value column)

MEDS times are absolute; a cohort's are hours since admission. Stay ``k`` of a patient (stays sorted by
``stay_id``) is placed at ``2000-01-01 + k * window``, where the window (whole days) is longer than any stay's
span, so stays never overlap. Each stay writes an ``ADMISSION`` row at its admission; its stays columns as
``STAY//<column>//<value>`` and its static features as ``STATIC//<column>`` (numeric, in ``numeric_value``) or
``STATIC//<column>//<value>`` (categorical) at the admission; events as ``<variable>`` with ``numeric_value``
(float32, the MEDS type); codes as ``<system>//<code>``; notes as ``NOTE`` with ``text_value``.

Not representable, left out and reported in the returned summary (and logged): image rows (MEDS has no image
modality), events without a value and multilabel labels. A missing static value is written as no row.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import meds as meds_source
from healthfusion.data.sources.meds import (
    ANCHOR_CODE,
    DEFAULT_SYSTEM,
    NOTE_CODE,
    SEP,
    STATIC_PREFIX,
    STAY_PREFIX,
)
from healthfusion.data.splits import split_patients
from healthfusion.files import display_path

log = logging.getLogger(__name__)

EPOCH = pd.Timestamp("2000-01-01")
SPLIT_NAMES = {"train": "train", "val": "tuning", "test": "held_out"}
STAY_CORE = ("stay_id", "patient_id", "prediction_time")
PREDICTION_TIMES = "prediction_times"  # the label shard of a cohort without labels: stays and prediction times
DATA_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                         ("numeric_value", pa.float32()), ("text_value", pa.large_string()), ("stay_id", pa.string()),
                         ("patient_id", pa.string())])


def export_meds(cohort: Cohort, out: str | Path, *, seed: int = 0, subjects_per_shard: int = 10_000,
                progress: bool = False) -> dict:
    """Write ``cohort`` as a MEDS dataset under ``out`` (created; must be empty or absent).

    Parameters
    ----------
    cohort : Cohort
        Any cohort (stays, static, events, codes, notes and labels are written).
    out : str or Path
        The MEDS root folder.
    seed : int, default 0
        Seed of the patient-level train/tuning/held_out split (70/15/15) written to ``subject_splits.parquet``.
    subjects_per_shard : int, default 10000
        Subjects per data shard (a subject is never split across shards).
    progress : bool, default False
        Log a line per shard written.

    Returns
    -------
    dict
        ``{"subjects", "stays", "data_rows", "labels": {name: rows}, "left_out": {what: rows}, "out"}``.

    Raises
    ------
    SourceError
        If ``out`` exists and is not empty, or a written table fails the MEDS validators (a bug).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SourceError(f"{out} is not empty; choose a new folder for the MEDS dataset.")
    stays = cohort.stays.copy()
    subject_of, patient_col = _subject_ids(stays["patient_id"])
    stays["subject_id"] = stays["patient_id"].map(subject_of).astype(np.int64)
    stays["admission"] = _admissions(cohort, stays)
    left_out: dict[str, int] = {}
    frames = [_stay_rows(stays), _static_rows(cohort, stays, left_out)]
    frames += _timed_rows(cohort, stays, left_out)
    data = pd.concat(frames, ignore_index=True)
    data["time"] = data["time"].dt.round("us")  # MEDS times are microseconds
    data = data.sort_values(["subject_id", "time", "order"], kind="stable").drop(columns="order")
    if patient_col:
        data["patient_id"] = data["subject_id"].map({v: k for k, v in subject_of.items()})
    else:
        data = data.drop(columns="patient_id", errors="ignore")
    split = split_patients(stays[["stay_id", "patient_id"]], seed=seed).map(SPLIT_NAMES)
    subject_split = pd.DataFrame({"subject_id": stays["subject_id"].to_numpy(), "split": split.to_numpy()})
    subject_split = subject_split.drop_duplicates("subject_id").sort_values("subject_id").reset_index(drop=True)
    n_rows = _write_data(out, data, subject_split, subjects_per_shard, progress)
    _write_metadata(out, cohort, data, subject_split, patient_col)
    labels = _write_labels(out, cohort, stays, left_out)
    for what, n in left_out.items():
        log.warning("MEDS export of %s left out %d %s (not representable in MEDS).", display_path(out), n, what)
    return {"subjects": int(subject_split.shape[0]), "stays": len(stays), "data_rows": n_rows, "labels": labels,
            "left_out": left_out, "out": out}


def _subject_ids(patient_ids: pd.Series) -> tuple[dict[str, int], bool]:
    """patient_id -> int64 subject id: the id itself when every id is a non-negative integer, else its rank
    (then the data keeps a ``patient_id`` column)."""
    unique = sorted(patient_ids.astype(str).unique())
    if all(p.isdigit() and len(p) < 19 and (p == "0" or not p.startswith("0")) for p in unique):
        return {p: int(p) for p in unique}, False
    return {p: i for i, p in enumerate(unique)}, True


def _admissions(cohort: Cohort, stays: pd.DataFrame) -> pd.Series:
    """Absolute admission time of each stay: EPOCH + k * window for the patient's k-th stay (by stay_id)."""
    lo, hi = 0.0, float(stays["prediction_time"].max())
    for name in ("events", "codes", "notes"):
        table = getattr(cohort, name)
        if table is not None and len(table):
            lo, hi = min(lo, float(table["time"].min())), max(hi, float(table["time"].max()))
    window_h = 24.0 * (math.ceil((hi - lo) / 24.0) + 1)
    k = stays.sort_values("stay_id").groupby("patient_id").cumcount().reindex(stays.index)
    return EPOCH + pd.to_timedelta(k * window_h - lo, unit="h")


def _frame(subject, time, code, numeric=None, text=None, stay=None, order=2) -> pd.DataFrame:
    n = len(subject)
    return pd.DataFrame({
        "subject_id": np.asarray(subject, dtype=np.int64), "time": pd.to_datetime(np.asarray(time)),
        "code": np.asarray(code, dtype=object),
        "numeric_value": np.full(n, np.nan) if numeric is None else np.asarray(numeric, dtype=float),
        "text_value": np.full(n, None, dtype=object) if text is None else np.asarray(text, dtype=object),
        "stay_id": np.asarray(stay, dtype=object), "order": order,
    })


def _at(stays: pd.DataFrame, stay_ids: pd.Series, hours) -> tuple[np.ndarray, np.ndarray]:
    """subject ids and absolute times of rows of ``stay_ids`` at ``hours`` after admission."""
    s = stays.set_index("stay_id")
    subj = s["subject_id"].reindex(stay_ids).to_numpy()
    adm = pd.DatetimeIndex(s["admission"].reindex(stay_ids).to_numpy())
    return subj, (adm + pd.to_timedelta(np.asarray(hours, dtype=float), unit="h")).to_numpy()


def _stay_rows(stays: pd.DataFrame) -> pd.DataFrame:
    parts = [_frame(stays["subject_id"], stays["admission"], np.full(len(stays), ANCHOR_CODE), stay=stays["stay_id"],
                    order=0)]
    for col in [c for c in stays.columns if c not in (*STAY_CORE, "subject_id", "admission")]:
        known = stays[stays[col].notna()]
        codes = STAY_PREFIX + col + SEP + known[col].astype(str)
        parts.append(_frame(known["subject_id"], known["admission"], codes, stay=known["stay_id"], order=1))
    return pd.concat(parts, ignore_index=True)


def _static_rows(cohort: Cohort, stays: pd.DataFrame, left_out: dict) -> pd.DataFrame:
    static = cohort.static
    parts = [_frame([], [], [], stay=[], order=1)]
    if static is None:
        return parts[0]
    for col in [c for c in static.columns if c != "stay_id"]:
        known = static[static[col].notna()]  # a missing value is no row (read back as missing)
        subj, time = _at(stays, known["stay_id"], np.zeros(len(known)))
        if cohort.meta.feature_types.get(col) == "numeric":
            parts.append(_frame(subj, time, np.full(len(known), STATIC_PREFIX + col), numeric=known[col],
                                stay=known["stay_id"], order=1))
        else:
            parts.append(_frame(subj, time, STATIC_PREFIX + col + SEP + known[col].astype(str), stay=known["stay_id"],
                                order=1))
    return pd.concat(parts, ignore_index=True)


def _timed_rows(cohort: Cohort, stays: pd.DataFrame, left_out: dict) -> list[pd.DataFrame]:
    parts = []
    if cohort.events is not None:
        ev = cohort.events
        valued = ev["value"].notna()
        if (~valued).any():
            left_out["events without a value"] = int((~valued).sum())
        ev = ev[valued]
        subj, time = _at(stays, ev["stay_id"], ev["time"])
        parts.append(_frame(subj, time, ev["variable"], numeric=ev["value"], stay=ev["stay_id"]))
    if cohort.codes is not None:
        cd = cohort.codes
        code = np.where(cd["system"] == DEFAULT_SYSTEM, cd["code"], cd["system"] + SEP + cd["code"])
        subj, time = _at(stays, cd["stay_id"], cd["time"])
        parts.append(_frame(subj, time, code, stay=cd["stay_id"]))
    if cohort.notes is not None:
        nt = cohort.notes
        subj, time = _at(stays, nt["stay_id"], nt["time"])
        parts.append(_frame(subj, time, np.full(len(nt), NOTE_CODE), text=nt["text"], stay=nt["stay_id"]))
    if cohort.images is not None and len(cohort.images):
        left_out["image rows"] = len(cohort.images)
    return parts


def _write_data(out: Path, data: pd.DataFrame, subject_split: pd.DataFrame, per_shard: int, progress: bool) -> int:
    split_of = subject_split.set_index("subject_id")["split"]
    data = data.assign(_split=data["subject_id"].map(split_of))
    schema = pa.schema([f for f in DATA_SCHEMA if f.name in data.columns])
    n = 0
    for split, part in data.groupby("_split", sort=True):
        subjects = np.sort(part["subject_id"].unique())
        for i in range(0, len(subjects), per_shard):
            chunk = part[part["subject_id"].isin(subjects[i:i + per_shard])].drop(columns="_split")
            path = out / "data" / split / f"{i // per_shard}.parquet"
            table = pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
            table = meds_source.validate_table("data", table, path)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
            n += table.num_rows
            if progress:
                log.info("MEDS export: %s (%d rows)", display_path(path), table.num_rows)
    return n


def _write_metadata(out: Path, cohort: Cohort, data: pd.DataFrame, subject_split: pd.DataFrame, patient_col: bool):
    meta_dir = out / "metadata"
    meta_dir.mkdir(parents=True, exist_ok=True)
    codes = pd.DataFrame({"code": sorted(data["code"].unique())})
    codes["description"] = codes["code"].map(_describe)
    codes["parent_codes"] = [None] * len(codes)
    table = pa.Table.from_pandas(codes, schema=pa.schema([("code", pa.string()), ("description", pa.string()),
                                                          ("parent_codes", pa.list_(pa.string()))]), preserve_index=False)
    pq.write_table(meds_source.validate_table("codes", table, meta_dir / "codes.parquet"), meta_dir / "codes.parquet")
    splits = pa.Table.from_pandas(subject_split, schema=pa.schema([("subject_id", pa.int64()), ("split", pa.string())]),
                                  preserve_index=False)
    path = meta_dir / "subject_splits.parquet"
    pq.write_table(meds_source.validate_table("subject_splits", splits, path), path)
    from healthfusion._version import __version__

    dataset = {"dataset_name": cohort.meta.name, "etl_name": "healthfusion cohort export", "etl_version": __version__,
               "meds_version": meds_source.meds_version(),
               "created_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
               "raw_source_id_columns": ["stay_id"] + (["patient_id"] if patient_col else [])}
    path = meta_dir / "dataset.json"
    path.write_text(json.dumps(meds_source.validate_dataset_metadata(dataset, path), indent=2))
    hf = {"name": cohort.meta.name, "description": cohort.meta.description,
          "feature_types": dict(cohort.meta.feature_types), "labels": [s.to_dict() for s in cohort.meta.labels],
          "derived": {k: list(v) for k, v in cohort.meta.derived.items()}}
    (meta_dir / "healthfusion.json").write_text(json.dumps(hf, indent=2))


def _describe(code: str) -> str:
    if code == ANCHOR_CODE:
        return "Start of a stay (ICU admission); stays columns and static features are recorded at this time."
    if code.startswith(STAY_PREFIX):
        return "Stay attribute " + code[len(STAY_PREFIX):].replace(SEP, " = ", 1)
    if code.startswith(STATIC_PREFIX):
        return "Static feature " + code[len(STATIC_PREFIX):].replace(SEP, " = ", 1)
    if code == NOTE_CODE:
        return "Clinical note (text_value)"
    return f"healthfusion variable or code {code}"


def _write_labels(out: Path, cohort: Cohort, stays: pd.DataFrame, left_out: dict) -> dict[str, int]:
    """One label shard per label; a cohort without labels gets one shard of prediction times only
    (``task_labels/prediction_times/``), so that it reads back as stays to predict on."""
    labels = cohort.labels
    s = stays.set_index("stay_id")
    if labels is None or not cohort.meta.labels:
        pred = pd.DatetimeIndex(s["admission"]) + pd.to_timedelta(s["prediction_time"].to_numpy(), unit="h")
        frame = pd.DataFrame({"subject_id": s["subject_id"].to_numpy(), "prediction_time": pred})
        schema = pa.schema([("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us"))])
        path = out / meds_source.LABELS_DIR / PREDICTION_TIMES / "0.parquet"
        table = meds_source.validate_table("label", pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return {PREDICTION_TIMES: table.num_rows}
    written: dict[str, int] = {}
    for spec in cohort.meta.labels:
        if spec.kind == "multilabel":
            left_out[f"multilabel label {spec.name!r}"] = len(labels)
            continue
        known = labels[labels[spec.name].notna()]
        sid = known["stay_id"]
        pred = pd.DatetimeIndex(s["admission"].reindex(sid).to_numpy()) + pd.to_timedelta(
            s["prediction_time"].reindex(sid).to_numpy(), unit="h")
        frame = pd.DataFrame({"subject_id": s["subject_id"].reindex(sid).to_numpy(), "prediction_time": pred})
        if spec.kind == "binary":
            col, values, typ = "boolean_value", known[spec.name].astype(float).to_numpy() == 1.0, pa.bool_()
        elif spec.kind == "regression":
            col, values, typ = "float_value", known[spec.name].astype(float).to_numpy(), pa.float32()
        else:
            col, values, typ = "categorical_value", known[spec.name].astype(str).to_numpy(), pa.string()
        frame[col] = values
        schema = pa.schema([("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us")), (col, typ)])
        path = out / meds_source.LABELS_DIR / spec.name / "0.parquet"
        table = meds_source.validate_table("label", pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        written[spec.name] = table.num_rows
    return written
