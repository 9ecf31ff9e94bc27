"""The multimodal cohort: one representation of patients/stays that every other part of healthfusion reads.

A :class:`Cohort` is a set of tables keyed by ``stay_id`` (see :mod:`healthfusion.data.schema`):

``stays``    one row per stay: ``patient_id``, ``prediction_time`` (hours since admission) and domain attributes
             (``site``, ``care_unit``, ``age_group``, ``sex``, ``ethnicity`` where known)
``static``   typed static features (``meta.feature_types`` says numeric or categorical for each column)
``events``   irregular time series in long format: ``time``, ``variable``, ``value``
``codes``    diagnosis/procedure codes: ``time``, ``system`` (e.g. ``icd9``), ``code``
``notes``    timestamped free text
``images``   image index: ``image_id``, ``time`` and either an array location (``part``, ``offset``) or a ``path``
``labels``   one column per :class:`~healthfusion.data.schema.LabelSpec`

On disk a cohort is a folder: ``cohort.json`` (schema version, feature types, label specs), one Parquet file per
table, image arrays as ``images/part-NNNNN.npy`` and ``accounting.json`` (what happened to every input row).
Loading is lazy: a table is read when first used, image arrays are memory-mapped, and
:meth:`Cohort.read_table` can read only some stays of a large table.

Example::

    cohort = Cohort.load("runs/cohort")          # validates the schema, reads nothing big yet
    events = cohort.observable("events")         # only events at or before each stay's prediction time
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort_tables import (
    _KIND_CHECK,
    _check_label,
    _normalise,
    _read_filtered,
    _read_image_file,
    _write_meta,
    per_stay,
)
from healthfusion.data.errors import CohortError
from healthfusion.data.schema import (
    SCHEMA_VERSION,
    TABLE_COLUMNS,
    TABLES,
    TIMED_TABLES,
    CohortMeta,
)

log = logging.getLogger(__name__)


class Cohort:
    """A multimodal cohort held in memory or read lazily from a folder.

    Parameters
    ----------
    stays : DataFrame
        One row per stay with ``stay_id``, ``patient_id``, ``prediction_time`` (+ domain columns).
    static, events, codes, notes, images, labels : DataFrame, optional
        The other tables (see the module docstring). ``images`` rows that point into ``image_arrays`` carry
        ``part`` = 0 and ``offset`` = row in the array.
    image_arrays : ndarray, optional
        ``[N, C, H, W]`` image array (uint8 or float32) addressed by ``images.offset``.
    meta : CohortMeta, optional
        Feature types and label specs. Static columns without a declared type are typed automatically
        (numeric dtype -> numeric, else categorical).
    accounting : RowAccounting, optional
        What the reader did with each input row.

    Raises
    ------
    CohortError
        If a table lacks a required column, has unparseable times or duplicate stays.
    """

    def __init__(
        self,
        stays: pd.DataFrame,
        *,
        static: pd.DataFrame | None = None,
        events: pd.DataFrame | None = None,
        codes: pd.DataFrame | None = None,
        notes: pd.DataFrame | None = None,
        images: pd.DataFrame | None = None,
        labels: pd.DataFrame | None = None,
        image_arrays: np.ndarray | None = None,
        meta: CohortMeta | None = None,
        accounting: RowAccounting | None = None,
    ):
        self.meta = meta or CohortMeta()
        self.accounting = accounting or RowAccounting()
        self._root: Path | None = None
        self._tables: dict[str, pd.DataFrame | None] = {}
        given = {"stays": stays, "static": static, "events": events, "codes": codes, "notes": notes,
                 "images": images, "labels": labels}
        for name, df in given.items():
            self._tables[name] = None if df is None else _normalise(name, df)
        self._image_parts: dict[int, np.ndarray] = {}
        if image_arrays is not None:
            self._image_parts[0] = np.asarray(image_arrays)
        self._present = {name for name, df in given.items() if df is not None}
        self._fill_feature_types()
        self.validate()

    # ------------------------------------------------------------------------------------------ construction
    def _fill_feature_types(self) -> None:
        static = self._tables.get("static")
        if static is None:
            return
        for col in static.columns:
            if col == "stay_id" or col in self.meta.feature_types:
                continue
            numeric = pd.api.types.is_numeric_dtype(static[col]) and not pd.api.types.is_bool_dtype(static[col])
            self.meta.feature_types[col] = "numeric" if numeric else "categorical"

    @classmethod
    def load(cls, path: str | Path, validate: bool = True) -> Cohort:
        """Open a cohort folder written by :meth:`save` or :class:`CohortWriter` without reading its tables.

        Raises
        ------
        CohortError
            If the folder or ``cohort.json`` is missing, the schema version differs, or a table file is
            missing/corrupt or lacks required columns.
        """
        root = Path(path)
        meta_path = root / "cohort.json"
        if not root.is_dir():
            raise CohortError(f"Cohort folder {root} does not exist. Build one with `healthfusion cohort build`.")
        if not meta_path.is_file():
            raise CohortError(f"{root} is not a cohort folder: {meta_path.name} is missing.")
        try:
            raw = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise CohortError(f"{meta_path} is not valid JSON ({exc}); rebuild the cohort.") from exc
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CohortError(
                f"{meta_path} has schema version {version!r}; this healthfusion reads version {SCHEMA_VERSION}. "
                "Rebuild the cohort with this version."
            )
        self = cls.__new__(cls)
        self.meta = CohortMeta.from_dict(raw)
        self._root = root
        self._tables = {name: None for name in TABLES}
        self._image_parts = {}
        self._present = set(raw.get("tables", {}))
        if "stays" not in self._present:
            raise CohortError(f"{meta_path} lists no 'stays' table; the cohort is incomplete. Rebuild it.")
        acc_path = root / "accounting.json"
        self.accounting = RowAccounting.from_dict(json.loads(acc_path.read_text())) if acc_path.is_file() else RowAccounting()
        for name in self._present:
            self._check_file_schema(name)
        if validate:
            self.validate()
        return self

    def _table_path(self, name: str) -> Path:
        assert self._root is not None
        return self._root / f"{name}.parquet"

    def _check_file_schema(self, name: str) -> None:
        path = self._table_path(name)
        if not path.is_file():
            raise CohortError(f"Cohort table file {path} is missing; cohort.json lists it. Rebuild the cohort.")
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CohortError(f"Cohort table file {path} is not readable Parquet ({exc}). Rebuild the cohort.") from exc
        for col, kind in TABLE_COLUMNS[name].items():
            if col not in schema.names:
                raise CohortError(f"{path}: required column {col!r} is missing (has {schema.names}).")
            if not _KIND_CHECK[kind](schema.field(col).type):
                raise CohortError(
                    f"{path}: column {col!r} has type {schema.field(col).type}; expected {kind}. Rebuild the cohort."
                )

    # ------------------------------------------------------------------------------------------ table access
    def has(self, table: str) -> bool:
        """Whether the cohort has ``table`` (it may still have zero rows)."""
        return table in self._present

    def _get(self, name: str) -> pd.DataFrame | None:
        if name not in self._present:
            return None
        if self._tables.get(name) is None and self._root is not None:
            self._tables[name] = pq.read_table(self._table_path(name)).to_pandas()
        return self._tables[name]

    @property
    def stays(self) -> pd.DataFrame:
        return self._get("stays")  # type: ignore[return-value]

    @property
    def static(self) -> pd.DataFrame | None:
        return self._get("static")

    @property
    def events(self) -> pd.DataFrame | None:
        return self._get("events")

    @property
    def codes(self) -> pd.DataFrame | None:
        return self._get("codes")

    @property
    def notes(self) -> pd.DataFrame | None:
        return self._get("notes")

    @property
    def images(self) -> pd.DataFrame | None:
        return self._get("images")

    @property
    def labels(self) -> pd.DataFrame | None:
        return self._get("labels")

    @property
    def stay_ids(self) -> np.ndarray:
        return self.stays["stay_id"].to_numpy()

    def __len__(self) -> int:
        return len(self.stays)

    def __repr__(self) -> str:
        parts = ", ".join(sorted(self._present))
        return f"Cohort(name={self.meta.name!r}, n_stays={len(self)}, tables=[{parts}])"

    def read_table(self, name: str, stay_ids: Iterable[str] | None = None, columns: Sequence[str] | None = None,
                   time_range: tuple[float | None, float | None] | None = None):
        """Rows of ``name`` for ``stay_ids`` only (all when None) and, for a timed table, with ``time`` inside
        ``time_range`` (inclusive; None = open end), reading no more than needed from disk: a table not loaded
        yet is filtered while it is read, so a window of a large table never loads the rest."""
        if name not in self._present:
            return None
        lo, hi = time_range if time_range is not None else (None, None)
        return self._rows(name, stay_ids, columns, lo, hi)

    def observable(self, table: str, stay_ids: Iterable[str] | None = None, start: float | None = None) -> pd.DataFrame:
        """Rows of a timed table that a model may see: ``time <= prediction_time`` of their stay.

        This is the single leakage guard of healthfusion: every feature builder reads timed tables through it, so
        nothing recorded after the prediction time reaches a model. ``start`` optionally drops rows before an
        observation window (e.g. ``start=0`` drops pre-admission rows).

        Raises
        ------
        CohortError
            If ``table`` is not one of the timed tables.
        """
        if table not in TIMED_TABLES:
            raise CohortError(f"observable() takes a timed table ({', '.join(TIMED_TABLES)}), not {table!r}.")
        if table not in self._present:
            return pd.DataFrame(columns=list(TABLE_COLUMNS[table]))
        cutoff = self.stays.set_index("stay_id")["prediction_time"]
        return self._rows(table, stay_ids, None, start, None, cutoff).reset_index(drop=True)

    def _rows(self, name: str, stay_ids: Iterable[str] | None, columns: Sequence[str] | None, lo: float | None,
              hi: float | None, cutoff: pd.Series | None = None) -> pd.DataFrame:
        """Rows with ``stay_id`` in ``stay_ids``, ``lo <= time <= hi`` and ``time <= cutoff[stay_id]`` (None = no
        condition): a table not loaded yet is filtered while read (:func:`_read_filtered`), one in memory here."""
        if all(x is None for x in (stay_ids, lo, hi, cutoff)):
            df = self._get(name)
        elif self._tables.get(name) is None and self._root is not None:
            ids = None if stay_ids is None else pa.array([str(s) for s in stay_ids], type=pa.string())
            return _read_filtered(self._table_path(name), columns, ids, lo, hi, cutoff)
        else:
            df = self._get(name)
            keep = np.ones(len(df), dtype=bool)
            if stay_ids is not None:
                keep &= df["stay_id"].isin(pd.Index([str(s) for s in stay_ids])).to_numpy()
            time = df["time"].to_numpy() if lo is not None or hi is not None or cutoff is not None else None
            if lo is not None:
                keep &= time >= lo
            if hi is not None:
                keep &= time <= hi
            if cutoff is not None:
                keep &= time <= per_stay(df["stay_id"], cutoff)
            df = df[keep]
        return df if columns is None else df[list(columns)]

    # ------------------------------------------------------------------------------------------ images
    def image_array(self, rows: pd.DataFrame) -> np.ndarray:
        """Pixel arrays ``[len(rows), C, H, W]`` for rows of the images table (array parts or file paths).

        Raises
        ------
        CohortError
            If a row has neither an array location nor a readable path, or the images differ in shape.
        """
        out = []
        for row in rows.itertuples(index=False):
            part = getattr(row, "part", None)
            if part is not None and not pd.isna(part):
                out.append(self._image_part(int(part))[int(row.offset)])
            else:
                out.append(_read_image_file(getattr(row, "path", None), row.image_id))
        if not out:
            return np.zeros((0, 1, 1, 1), dtype=np.float32)
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise CohortError(f"Images differ in shape {sorted(shapes)}; resize them when building the cohort.")
        return np.stack(out)

    def _image_part(self, part: int) -> np.ndarray:
        if part not in self._image_parts:
            if self._root is None:
                raise CohortError(f"Image array part {part} is not in this in-memory cohort.")
            path = self._root / "images" / f"part-{part:05d}.npy"
            if not path.is_file():
                raise CohortError(f"Image array file {path} is missing; rebuild the cohort.")
            self._image_parts[part] = np.load(path, mmap_mode="r")
        return self._image_parts[part]

    # ------------------------------------------------------------------------------------------ labels/subsets
    def label(self, name: str) -> pd.Series:
        """Label column ``name`` indexed by stay_id, in the order of :attr:`stays` (missing labels are NaN/None)."""
        spec = self.meta.label(name)
        labels = self.labels
        if labels is None or spec.name not in labels.columns:
            raise CohortError(f"Cohort {self.meta.name!r} declares label {name!r} but its labels table lacks it.")
        return labels.set_index("stay_id")[name].reindex(self.stay_ids)

    def subset(self, stay_ids: Iterable[str]) -> Cohort:
        """An in-memory cohort with only ``stay_ids`` (image arrays are copied for the kept images)."""
        ids = pd.Index([str(s) for s in stay_ids])
        tables = {name: self.read_table(name, ids) for name in TABLES if name in self._present}
        arrays = None
        images = tables.get("images")
        if images is not None and len(images):
            if "part" in images.columns:
                located = images["part"].notna()
                arrays = self.image_array(images[located])
                images = images.copy()
                images.loc[located, "part"] = 0
                images.loc[located, "offset"] = np.arange(int(located.sum()))
            tables["images"] = images
        return Cohort(
            tables.pop("stays"), **tables, image_arrays=arrays,
            meta=CohortMeta.from_dict(self.meta.to_dict()), accounting=self.accounting,
        )

    # ------------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check keys, references and label values; raise :class:`CohortError` naming the first problem.

        Large tables of a lazily loaded cohort are checked only once they have been read.
        """
        stays = self.stays
        if stays is None:
            raise CohortError("A cohort needs a stays table.")
        dup = stays["stay_id"].duplicated()
        if dup.any():
            raise CohortError(f"stays: stay_id {stays['stay_id'][dup].iloc[0]!r} appears more than once.")
        known = pd.Index(stays["stay_id"])
        for name in ("static", "labels"):
            df = self._tables.get(name)
            if df is None:
                continue
            d = df["stay_id"].duplicated()
            if d.any():
                raise CohortError(f"{name}: stay_id {df['stay_id'][d].iloc[0]!r} appears more than once.")
        for name in ("static", "labels", *TIMED_TABLES):
            df = self._tables.get(name)
            if df is None:
                continue
            unknown = ~df["stay_id"].isin(known)
            if unknown.any():
                raise CohortError(
                    f"{name}: {int(unknown.sum())} row(s) refer to stays not in the stays table "
                    f"(first: row {int(np.flatnonzero(unknown.to_numpy())[0])}, stay_id "
                    f"{df['stay_id'][unknown].iloc[0]!r}). Add the stays or drop those rows."
                )
        static = self._tables.get("static")
        if static is not None:
            bad = {c: k for c, k in self.meta.feature_types.items() if k not in ("numeric", "categorical")}
            if bad:
                raise CohortError(f"Unknown feature type(s) {bad}; use 'numeric' or 'categorical'.")
            undeclared = [c for c in self.meta.feature_types if c not in static.columns]
            if undeclared:
                raise CohortError(f"cohort.json types static feature(s) {undeclared} that the static table lacks.")
        labels = self._tables.get("labels")
        if labels is not None:
            for spec in self.meta.labels:
                _check_label(labels, spec)

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the cohort as a folder (see the module docstring) and return its path."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        counts = {}
        for name in TABLES:
            df = self._get(name)
            if df is None:
                continue
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), root / f"{name}.parquet")
            counts[name] = len(df)
        images = self._get("images")
        if images is not None and "part" in images.columns:
            (root / "images").mkdir(exist_ok=True)
            for part in sorted({int(p) for p in images["part"].dropna().unique()}):
                np.save(root / "images" / f"part-{part:05d}.npy", np.asarray(self._image_part(part)))
        _write_meta(root, self.meta, counts)
        (root / "accounting.json").write_text(json.dumps(self.accounting.to_dict(), indent=2))
        return root



class CohortWriter:
    """Write a cohort folder chunk by chunk, so cohorts larger than memory can be built.

    Example::

        with CohortWriter("out", meta) as w:
            for chunk in chunks:
                w.append(stays=..., events=..., images=array)   # images rows get part/offset automatically
    """

    def __init__(self, path: str | Path, meta: CohortMeta, accounting: RowAccounting | None = None):
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "cohort.json").unlink(missing_ok=True)  # an interrupted write leaves no loadable folder
        self.meta = meta
        self.accounting = accounting or RowAccounting()
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._counts: dict[str, int] = {}
        self._part = 0

    def append(self, image_arrays: np.ndarray | None = None, **tables: pd.DataFrame) -> None:
        """Append one chunk of tables (each a DataFrame with the schema's columns)."""
        unknown = set(tables) - set(TABLES)
        if unknown:
            raise CohortError(f"Unknown table(s) {sorted(unknown)}; tables are {', '.join(TABLES)}.")
        if image_arrays is not None:
            images = tables.get("images")
            if images is None or len(images) != len(image_arrays):
                raise CohortError("append(image_arrays=...) needs an images table with one row per array.")
            (self.root / "images").mkdir(exist_ok=True)
            np.save(self.root / "images" / f"part-{self._part:05d}.npy", image_arrays)
            tables["images"] = images.assign(part=self._part, offset=np.arange(len(images)))
            self._part += 1
        for name, df in tables.items():
            df = _normalise(name, df)
            table = pa.Table.from_pandas(df, preserve_index=False)
            if name not in self._writers:
                self._writers[name] = pq.ParquetWriter(self.root / f"{name}.parquet", table.schema)
            self._writers[name].write_table(table.cast(self._writers[name].schema))
            self._counts[name] = self._counts.get(name, 0) + len(df)

    def close(self) -> Path:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        (self.root / "accounting.json").write_text(json.dumps(self.accounting.to_dict(), indent=2))
        _write_meta(self.root, self.meta, self._counts)
        return self.root

    def __enter__(self) -> CohortWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            for writer in self._writers.values():
                writer.close()
