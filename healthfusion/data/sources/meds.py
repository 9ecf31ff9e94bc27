"""MEDS (Medical Event Data Standard, schema 0.4): read a MEDS dataset plus its label shards into a cohort.

This is the only module that imports the ``meds`` package (lazily: ``pip install "healthfusion[meds]"``); the
writer, :mod:`healthfusion.data.sources.meds_export`, validates its tables through :func:`validate_table`.

A MEDS dataset is a folder: ``data/**/*.parquet`` (one row per measurement: ``subject_id``, ``time``, ``code``,
``numeric_value``, ``text_value``), ``metadata/`` (``codes.parquet``, ``subject_splits.parquet``,
``dataset.json``) and label shards (``subject_id``, ``prediction_time`` and one of ``boolean_value``,
``integer_value``, ``float_value``, ``categorical_value``), by convention under ``task_labels/<task>/``.

How a MEDS dataset becomes a cohort
-----------------------------------
``stays``   one stay per label row. A stay starts at its **anchor**: the subject's latest event whose code is
            ``anchor`` (default ``ADMISSION``) or starts with ``ADMISSION//``, at or before the prediction time;
            every time becomes hours since that anchor. The stay id is the anchor row's ``stay_id`` column when the
            data has one (datasets written by ``healthfusion cohort export --format meds``), else
            ``<subject_id>@<prediction time, ISO 8601>``; ``patient_id`` is the data's ``patient_id`` column, else
            the subject id. Rows coded ``STAY//<column>//<value>`` at the anchor become stays columns
            (e.g. ``care_unit``).
``static``  rows with no time (MEDS static measurements): with a value, a numeric column named by the code
            (``HEIGHT``); without, a categorical column split at the last ``//`` (``EYE_COLOR//BROWN`` ->
            ``EYE_COLOR`` = ``BROWN``; a code without ``//`` gives the value ``present``). Rows coded
            ``STATIC//<column>`` (numeric) or ``STATIC//<column>//<value>`` (categorical) are per-stay static
            features. ``MEDS_BIRTH`` gives ``age`` in years at the anchor.
``events``  timed rows with a ``numeric_value``: ``variable`` = code, ``value`` (MEDS stores float32).
``notes``   timed rows with a ``text_value``.
``codes``   other timed rows: ``system`` = the code before its first ``//`` and ``code`` the rest
            (``ICD9//4019`` -> ``ICD9``, ``4019``); a code without ``//`` has system ``meds``.
``labels``  one column per task: ``boolean_value`` -> binary, ``float_value`` -> regression, ``integer_value`` and
            ``categorical_value`` -> multiclass. A shard with no value column gives stays and prediction times
            only (a cohort to predict on).

A timed row belongs to the stay of the latest anchor at or before it (or to its ``stay_id`` when the data has that
column), up to the subject's next anchor; rows of one anchor feed every label row (stay) of it.

Row accounting
--------------
Table ``data/*.parquet`` counts every data row once: used, or dropped as ``before the subject's first anchor``,
``no label row for its stay``, ``subject has no label row`` or ``repeated static value`` (the first is kept).
Each ``labels/<task>`` table counts label rows: used, or dropped as ``no anchor event at or before the
prediction time`` or ``repeats a stay`` (a second row for the same stay id; the first is kept).

Example::

    cohort = build("meds_root", task="in_hospital_death")     # labels from meds_root/task_labels/in_hospital_death/
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.optional import require

log = logging.getLogger(__name__)

SEP = "//"
ANCHOR_CODE = "ADMISSION"
STAY_PREFIX = "STAY//"
STATIC_PREFIX = "STATIC//"
NOTE_CODE = "NOTE"
DEFAULT_SYSTEM = "meds"
LABELS_DIR = "task_labels"
HEALTHFUSION_META = "metadata/healthfusion.json"  # cohort meta written by the exporter (label specs, feature types)
VALUE_COLUMNS = {"boolean_value": "binary", "float_value": "regression", "integer_value": "multiclass",
                 "categorical_value": "multiclass"}
DATA_TABLE = "data/*.parquet"


def _meds():
    return require("meds", extra="meds", needed_for="Reading or writing MEDS")


def validate_table(kind: str, table: pa.Table, where: str | Path) -> pa.Table:
    """Check ``table`` against the MEDS schema ``kind`` (``data``, ``label``, ``subject_splits``, ``codes``) and
    return it aligned to that schema (column order and types).

    Raises
    ------
    SourceError
        Naming ``where`` (the file) and what the ``meds`` validator said.
    """
    meds = _meds()
    schema = {"data": meds.DataSchema, "label": meds.LabelSchema, "subject_splits": meds.SubjectSplitSchema,
              "codes": meds.CodeMetadataSchema}[kind]
    try:
        aligned = schema.align(table)
        schema.validate(aligned)
    except Exception as exc:  # flexible_schema raises its own error types; re-raise as a named input error
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None and str(exc.__cause__) != str(exc) else ""
        raise SourceError(f"{where} is not a valid MEDS {kind} table: {exc}{cause}. It needs the columns "
                          f"{list(schema.required_columns())} with the MEDS types.") from exc
    return aligned


def validate_dataset_metadata(metadata: dict, where: str | Path) -> dict:
    """Check ``metadata`` against the MEDS dataset metadata JSON schema; raise :class:`SourceError` naming ``where``."""
    meds = _meds()
    try:
        meds.DatasetMetadataSchema(**metadata)
    except Exception as exc:
        raise SourceError(f"{where} is not valid MEDS dataset metadata: {exc}.") from exc
    return metadata


def meds_version() -> str:
    return _meds().__version__


def build(path: str | Path, *, task: str | None = None, progress: bool = False, labels: str | Path | None = None,
          anchor: str = ANCHOR_CODE) -> Cohort:
    """Read a MEDS dataset and its label shards into a :class:`~healthfusion.data.cohort.Cohort`.

    Parameters
    ----------
    path : str or Path
        The MEDS root folder (``data/``, ``metadata/``).
    task : str, optional
        Read the label shards of ``<path>/task_labels/<task>/``; ``None`` reads every task there.
    progress : bool, default False
        Log a line per data shard.
    labels : str or Path, optional
        One label shard (a ``.parquet`` file or a folder of them) anywhere; its file stem (or folder name) names
        the label. Overrides ``task``.
    anchor : str, default "ADMISSION"
        Code that starts a stay (also matches ``<anchor>//...``).

    Raises
    ------
    SourceError
        If the folder has no data shards or no label shards, a shard fails the MEDS schema (naming the file), or
        two tasks give one stay different prediction times.
    """
    root = Path(path)
    if not (root / "data").is_dir():
        raise SourceError(f"{root} is not a MEDS dataset: it has no data/ folder of Parquet shards.")
    acc = RowAccounting()
    data = _read_data(root, acc, progress)
    anchors = _anchors(data, anchor)
    stays, label_frame, specs = _read_labels(root, task, labels, anchors, acc)
    extra = _hf_meta(root)
    tables = _assign(data, anchors, stays, acc)
    meta = CohortMeta(name=extra.get("name", root.name), source="meds", description=extra.get("description", ""),
                      labels=[_spec(s, extra) for s in specs],
                      derived={k: list(v) for k, v in extra.get("derived", {}).items()})
    order = [d.get("name") for d in extra.get("labels", [])]
    meta.labels.sort(key=lambda s: order.index(s.name) if s.name in order else len(order))
    static = tables["static"]
    for col, kind in extra.get("feature_types", {}).items():  # the exporter's types; an all-missing column is no row
        if static is None:
            static = tables["stays"][["stay_id"]].copy()
        if col not in static:
            static[col] = np.nan if kind == "numeric" else None
        meta.feature_types[col] = kind
    tables["static"] = static
    acc.check()
    return Cohort(tables["stays"], static=tables["static"], events=tables["events"], codes=tables["codes"],
                  notes=tables["notes"], labels=label_frame, meta=meta, accounting=acc)


def _read_data(root: Path, acc: RowAccounting, progress: bool) -> pd.DataFrame:
    shards = sorted((root / "data").rglob("*.parquet"))
    if not shards:
        raise SourceError(f"{root / 'data'} holds no .parquet data shards.")
    parts = []
    for i, shard in enumerate(shards):
        try:
            table = pq.read_table(shard)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{shard} is not readable Parquet ({exc}).") from exc
        table = validate_table("data", table, shard)
        frame = table.to_pandas()
        for col, empty in (("numeric_value", np.nan), ("text_value", None)):  # optional in MEDS: absent = null
            if col not in frame:
                frame[col] = empty
        if "stay_id" in frame:
            frame["stay_id"] = frame["stay_id"].astype(object).where(frame["stay_id"].notna(), None)
        parts.append(frame)
        if progress:
            log.info("MEDS shard %d/%d: %s (%d rows)", i + 1, len(shards), shard.name, len(frame))
    data = pd.concat(parts, ignore_index=True)
    acc.read(DATA_TABLE, len(data))
    return data


def _anchors(data: pd.DataFrame, anchor: str) -> pd.DataFrame:
    """One row per anchor event: row (index into data), subject_id, time (+ stay_id when the data has it)."""
    code = data["code"]
    is_anchor = ((code == anchor) | code.str.startswith(anchor + SEP)) & data["time"].notna()
    cols = ["subject_id", "time"] + (["stay_id"] if "stay_id" in data else [])
    out = data.loc[is_anchor, cols].rename_axis("row").reset_index()
    return out.sort_values(["time", "row"], kind="stable").reset_index(drop=True)


def _label_sources(root: Path, task: str | None, labels: str | Path | None) -> dict[str, list[Path]]:
    if labels is not None:
        p = Path(labels)
        files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
        if not files or not files[0].is_file():
            raise SourceError(f"Label shard {p} not found (a .parquet file or a folder of them).")
        return {p.stem if p.is_file() else p.name: files}
    base = root / LABELS_DIR
    if task is not None:
        files = sorted((base / task).rglob("*.parquet"))
        if not files:
            known = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
            raise SourceError(f"No label shards for task {task!r} under {base / task}; tasks there: {known or 'none'}.")
        return {task: files}
    tasks = {d.name: sorted(d.rglob("*.parquet")) for d in sorted(base.iterdir()) if d.is_dir()} if base.is_dir() else {}
    tasks = {k: v for k, v in tasks.items() if v}
    if not tasks:
        raise SourceError(f"{root} has no label shards under {LABELS_DIR}/<task>/: pass a label shard with --option labels=PATH "
                          "(subject_id, prediction_time and one value column); each label row becomes a stay.")
    return tasks


def _read_labels(root, task, labels, anchors, acc):
    """Stays (stay_id, subject_id, anchor row and time, prediction_time), the labels frame (None when no shard
    has a value column) and the label specs, from the label shards."""
    frames, specs = [], []
    for name, files in _label_sources(root, task, labels).items():
        table_name = f"labels/{name}"
        frame = pd.concat([validate_table("label", _without_empty_values(pq.read_table(f)), f).to_pandas()
                           for f in files], ignore_index=True)
        acc.read(table_name, len(frame))
        present = [c for c in VALUE_COLUMNS if c in frame and frame[c].notna().any()]
        if len(present) > 1:
            raise SourceError(f"Label shard {files[0]} fills {present}; a label shard holds one value column (or "
                              "none: prediction times only).")
        value_col = present[0] if present else None
        frame = frame.rename(columns={value_col: name}) if value_col else frame.assign(**{name: np.nan})
        frame = _attach_anchor(frame[["subject_id", "prediction_time", name]], anchors)
        no_anchor = frame["anchor_row"].isna()
        acc.drop(table_name, "no anchor event at or before the prediction time", int(no_anchor.sum()))
        frame = frame[~no_anchor]
        if "stay_id" in anchors:
            frame["stay_id"] = frame["anchor_stay"].astype(str)
        else:
            frame["stay_id"] = frame["subject_id"].astype(str) + "@" + frame["prediction_time"].dt.strftime(
                "%Y-%m-%dT%H:%M:%S.%f").str.removesuffix(".000000")
        dup = frame["stay_id"].duplicated()
        acc.drop(table_name, "repeats a stay", int(dup.sum()))
        frame = frame[~dup]
        acc.use(table_name, len(frame))
        if value_col is not None:  # a shard without values defines stays to predict on, no label
            kind = VALUE_COLUMNS[value_col]
            frame[name] = frame[name].astype(str if kind == "multiclass" else float)
            classes = tuple(sorted(frame[name].unique())) if kind == "multiclass" else None
            specs.append(LabelSpec(name, kind, classes=classes, description=f"MEDS label shard {name}"))
        frames.append((frame, name, value_col is not None))
    stays = pd.concat([f.drop(columns=[name]) for f, name, _ in frames])
    times = stays.groupby("stay_id")["prediction_time"].nunique()
    if (times > 1).any():
        bad = times.index[times > 1][0]
        raise SourceError(f"Stay {bad!r} has different prediction times in different label shards; read one task "
                          "at a time with --task.")
    stays = stays.drop_duplicates("stay_id").reset_index(drop=True)
    label_frame = stays[["stay_id"]] if specs else None
    for frame, name, valued in frames:
        if valued:
            label_frame = label_frame.merge(frame[["stay_id", name]], on="stay_id", how="left")
    return stays, label_frame, specs


def _without_empty_values(table: pa.Table) -> pa.Table:
    """Drop value columns that are entirely null: an unused value column is absent, not a column of nulls (the
    MEDS label schema forbids nulls in the value columns it has)."""
    empty = [c for c in VALUE_COLUMNS if c in table.column_names and table[c].null_count == table.num_rows]
    return table.drop_columns(empty)


def _attach_anchor(frame: pd.DataFrame, anchors: pd.DataFrame) -> pd.DataFrame:
    """Add anchor_row, anchor_time (and anchor_stay) of the latest anchor at or before each prediction time."""
    right = anchors.rename(columns={"row": "anchor_row", "time": "anchor_time", "stay_id": "anchor_stay"})
    right = right.assign(key_time=right["anchor_time"])
    left = frame.assign(key_time=frame["prediction_time"].astype(right["key_time"].dtype)).reset_index(drop=True)
    left["_order"] = np.arange(len(left))
    merged = pd.merge_asof(left.sort_values("key_time"), right.sort_values("key_time"), on="key_time",
                           by="subject_id", direction="backward")
    return merged.sort_values("_order").drop(columns=["_order", "key_time"]).reset_index(drop=True)


def _assign(data: pd.DataFrame, anchors: pd.DataFrame, stays: pd.DataFrame, acc: RowAccounting) -> dict:
    """Give every data row its anchor, then expand anchors to their stays and split rows into cohort tables."""
    meds = _meds()
    n = len(data)
    row_anchor = np.full(n, -1, dtype=np.int64)
    timed = data["time"].notna().to_numpy()
    timed_rows = data.loc[timed, ["subject_id", "time"]].reset_index().rename(columns={"index": "row"})
    a = anchors.reset_index().rename(columns={"index": "anchor_id", "row": "anchor_row"})
    if "stay_id" in data and data["stay_id"].notna().any():
        by_stay = dict(zip(a["stay_id"], a["anchor_id"], strict=True))
        ids = data["stay_id"].map(by_stay)
        has = ids.notna().to_numpy() & timed
        row_anchor[has] = ids[has].astype(np.int64)
        timed_rows = timed_rows[~has[timed_rows["row"].to_numpy()]]
    if len(timed_rows):
        merged = pd.merge_asof(timed_rows.sort_values("time"), a[["subject_id", "time", "anchor_id"]].sort_values("time"),
                               on="time", by="subject_id", direction="backward")
        got = merged["anchor_id"].notna().to_numpy()
        row_anchor[merged["row"].to_numpy()[got]] = merged["anchor_id"].to_numpy()[got].astype(np.int64)

    subjects_with_stays = set(stays["subject_id"])
    birth = timed & (data["code"] == meds.birth_code).to_numpy()
    labelled_anchors = set(stays["anchor_row"].astype(np.int64))
    anchor_labelled = a["anchor_row"].isin(labelled_anchors).to_numpy()
    in_subject = data["subject_id"].isin(subjects_with_stays).to_numpy()
    reason = np.full(n, "", dtype=object)
    reason[~in_subject] = "subject has no label row"
    reason[in_subject & timed & (row_anchor < 0) & ~birth] = "before the subject's first anchor"
    has_anchor = row_anchor >= 0
    unlabelled = np.zeros(n, dtype=bool)
    unlabelled[has_anchor] = ~anchor_labelled[row_anchor[has_anchor]]
    reason[in_subject & unlabelled] = "no label row for its stay"
    keep = reason == ""
    for why in ("subject has no label row", "before the subject's first anchor", "no label row for its stay"):
        acc.drop(DATA_TABLE, why, int((reason == why).sum()))

    stay_rows = stays.assign(anchor_id=stays["anchor_row"].map(dict(zip(a["anchor_row"], a["anchor_id"], strict=True))))
    tables = _split_rows(data, keep & timed & ~birth, row_anchor, a, stay_rows)
    static, n_dup = _static(data, keep, timed, birth, row_anchor, a, stay_rows, tables.pop("stay_static"))
    acc.drop(DATA_TABLE, "repeated static value", n_dup)
    acc.use(DATA_TABLE, int(keep.sum()) - n_dup)
    tables["static"] = static
    return tables


def _split_rows(data, mask, row_anchor, a, stay_rows) -> dict:
    rows = data.loc[mask].copy()
    rows["_row"] = rows.index
    rows["anchor_id"] = row_anchor[mask]
    rows = rows.merge(stay_rows[["anchor_id", "stay_id"]], on="anchor_id", suffixes=("_data", ""))
    anchor_time = a["time"].to_numpy()[rows["anchor_id"].to_numpy()]
    rows["hours"] = (rows["time"] - pd.to_datetime(anchor_time)).dt.total_seconds().to_numpy() / 3600.0
    code = rows["code"].astype(str)
    text, numeric = rows["text_value"].notna(), rows["numeric_value"].notna()
    is_anchor_row = rows["_row"].isin(set(a["anchor_row"])) & ~code.str.contains(SEP)  # ADMISSION//X: also a code
    stay_col = code.str.startswith(STAY_PREFIX)
    static_col = code.str.startswith(STATIC_PREFIX)
    plain = ~(is_anchor_row | stay_col | static_col)
    ev = rows[plain & numeric & ~text]
    nt = rows[plain & text]
    cd = rows[plain & ~numeric & ~text]
    events = pd.DataFrame({"stay_id": ev["stay_id"], "time": ev["hours"], "variable": ev["code"],
                           "value": ev["numeric_value"].astype("float64")})
    notes = pd.DataFrame({"stay_id": nt["stay_id"], "time": nt["hours"], "text": nt["text_value"].astype(str)})
    codes = None
    if len(cd):
        parts = cd["code"].astype(str).str.split(SEP, n=1, expand=True)
        if parts.shape[1] == 1:
            parts[1] = None
        system = parts[0].where(parts[1].notna(), DEFAULT_SYSTEM)
        codes = pd.DataFrame({"stay_id": cd["stay_id"], "time": cd["hours"], "system": system,
                              "code": parts[1].where(parts[1].notna(), parts[0])}).reset_index(drop=True)
    stays = stay_rows[["stay_id", "subject_id", "prediction_time", "anchor_time"]].copy()
    stays["patient_id"] = stays["subject_id"].astype(str)
    stays["prediction_time"] = (stays["prediction_time"] - stays["anchor_time"]).dt.total_seconds() / 3600.0
    sc = rows[stay_col]
    if len(sc):
        kv = sc["code"].str.slice(len(STAY_PREFIX)).str.split(SEP, n=1, expand=True)
        wide = pd.DataFrame({"stay_id": sc["stay_id"], "col": kv[0], "val": kv[1]})
        wide = wide.drop_duplicates(["stay_id", "col"]).pivot(index="stay_id", columns="col", values="val")
        stays = stays.merge(wide, left_on="stay_id", right_index=True, how="left")
    if "patient_id" in data:
        pid = data.loc[a["anchor_row"].to_numpy(), "patient_id"].to_numpy()
        stays["patient_id"] = pd.Series(pid, index=a["anchor_id"]).reindex(stay_rows["anchor_id"]).astype(str).to_numpy()
    stays = stays.drop(columns=["subject_id", "anchor_time"]).reset_index(drop=True)
    return {"stays": stays, "events": events.reset_index(drop=True) if len(events) else None,
            "notes": notes.reset_index(drop=True) if len(notes) else None, "codes": codes,
            "stay_static": rows[static_col]}


def _static(data, keep, timed, birth, row_anchor, a, stay_rows, stay_static) -> tuple[pd.DataFrame | None, int]:
    """Static table from null-time rows (per subject), STATIC// rows (per stay) and MEDS_BIRTH (age)."""
    long = []  # (stay_id, column, value, order)
    untimed = data.loc[keep & ~timed]
    if len(untimed):
        u = untimed.reset_index().merge(stay_rows[["subject_id", "stay_id"]], on="subject_id", suffixes=("_data", ""))
        long.append(_static_long(u, u["code"].astype(str), per_subject=True))
    if len(stay_static):
        s = stay_static.reset_index()
        long.append(_static_long(s, s["code"].astype(str).str.slice(len(STATIC_PREFIX)), per_subject=False))
    births = data.loc[keep & birth]
    if len(births):
        b = births.reset_index().merge(stay_rows[["subject_id", "stay_id", "anchor_time"]], on="subject_id",
                                       suffixes=("_data", ""))
        years = (b["anchor_time"] - b["time"]).dt.total_seconds() / (365.25 * 86400)
        long.append(pd.DataFrame({"row": b["index"], "stay_id": b["stay_id"], "column": "age", "value": years}))
    if not long:
        return None, 0
    frame = pd.concat(long, ignore_index=True)
    dup = frame.duplicated(["stay_id", "column"])
    first_rows = set(frame.loc[~dup, "row"])
    n_dup = len(set(frame.loc[dup, "row"]) - first_rows)
    frame = frame[~dup]
    static = stay_rows[["stay_id"]].copy()
    for column, part in frame.groupby("column", sort=True):
        values = part.set_index("stay_id")["value"]
        numeric = all(isinstance(v, float | int | np.floating) for v in values)
        static[column] = static["stay_id"].map(values)
        if numeric:
            static[column] = static[column].astype(float)
    return static.reset_index(drop=True), n_dup


def _static_long(rows: pd.DataFrame, code: pd.Series, per_subject: bool) -> pd.DataFrame:
    value = rows["numeric_value"]
    has_value = value.notna()
    split = code.str.rsplit(SEP, n=1, expand=True)
    if split.shape[1] == 1:
        split[1] = None
    column = code.where(has_value, split[0].where(split[1].notna(), code))
    cat = split[1].where(split[1].notna(), "present")
    out = pd.DataFrame({"row": rows["index"], "stay_id": rows["stay_id"], "column": column,
                        "value": [float(v) if h else c for v, h, c in zip(value, has_value, cat, strict=True)]})
    return out


def _hf_meta(root: Path) -> dict:
    path = root / HEALTHFUSION_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path} is not valid JSON ({exc}); delete it or export the cohort again.") from exc


def _spec(spec: LabelSpec, extra: dict) -> LabelSpec:
    """The exporter's label spec (kind, classes, description) when it wrote one for this label, else ``spec``."""
    for d in extra.get("labels", []):
        if d.get("name") == spec.name:
            return LabelSpec.from_dict(d)
    return spec
