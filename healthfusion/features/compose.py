"""One featurizer for all modalities: fit on training stays, transform any stays into an :class:`ArrayDataset`,
save and restore its whole state as JSON (stored beside a saved model as ``preprocessing.json``).

Example::

    feat = CohortFeaturizer(modalities=("ts", "static", "image"), label="mortality")
    train = feat.fit(cohort, train_ids).transform(cohort, train_ids)
    test = feat.transform(cohort, test_ids)
    state = feat.get_state()                       # JSON-serialisable
    same = CohortFeaturizer.from_state(state)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.records import PatientRecords
from healthfusion.data.schema import LabelSpec
from healthfusion.features import batch as B
from healthfusion.features.codes import CodeTransformer
from healthfusion.features.dataset import ArrayDataset
from healthfusion.features.image import ImageTransformer
from healthfusion.features.summary import SUMMARY_STATS, summary_features
from healthfusion.features.summary_encoding import SummaryTransformer, in_window, window_events
from healthfusion.features.tabular import StaticTransformer
from healthfusion.features.text import HFTokenTransformer, TextTransformer
from healthfusion.features.timeseries import TimeSeriesTransformer

log = logging.getLogger(__name__)

STATE_VERSION = 1
_DEFAULTS = {
    "ts": TimeSeriesTransformer,
    "static": StaticTransformer,
    "codes": CodeTransformer,
    "text": TextTransformer,
    "image": ImageTransformer,
}
_TABLE = {"ts": "events", "static": "static", "codes": "codes", "text": "notes", "image": "images"}


def encode_target(values: pd.Series, spec: LabelSpec) -> np.ndarray:
    """Encode a label column: binary/regression -> float32 (NaN missing), multiclass -> int64 class index
    (-1 missing), multilabel -> float32 multi-hot ``[N, K]`` (NaN row when missing).

    Raises
    ------
    ValueError
        On a value that is not valid for ``spec`` (an unknown class is an error, not a 0).
    """
    if spec.kind in ("binary", "regression"):
        out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float32)
        bad = np.isnan(out) & values.notna().to_numpy()
        if spec.kind == "binary":
            bad |= ~np.isnan(out) & ~np.isin(out, [0.0, 1.0])
        if bad.any():
            raise ValueError(f"Label {spec.name!r}: value {values.iloc[int(np.flatnonzero(bad)[0])]!r} is not valid "
                             f"for a {spec.kind} label.")
        return out
    classes = list(spec.classes)
    if spec.kind == "multiclass":
        idx = pd.Index(classes).get_indexer(values.astype("string").astype(object)).astype(np.int64)
        unknown = (idx < 0) & values.notna().to_numpy()
        if unknown.any():
            raise ValueError(f"Label {spec.name!r}: value {values.iloc[int(np.flatnonzero(unknown)[0])]!r} is not "
                             f"one of the declared classes {classes}.")
        return idx
    out = np.full((len(values), len(classes)), np.nan, dtype=np.float32)
    lookup = {c: i for i, c in enumerate(classes)}
    for row, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        out[row] = 0.0
        for item in v:
            if str(item) not in lookup:
                raise ValueError(f"Label {spec.name!r}: class {item!r} is not one of {classes}.")
            out[row, lookup[str(item)]] = 1.0
    return out


class CohortFeaturizer:
    """Fit per-modality transformers on training stays and produce model-ready arrays.

    Parameters
    ----------
    modalities : sequence of str
        Any of ``"ts"``, ``"static"``, ``"codes"``, ``"text"``, ``"image"``.
    label : str, optional
        Label to encode as ``target`` (must be declared in the cohort's meta).
    transformers : dict, optional
        Per-modality transformer instances overriding the defaults (e.g. ``{"ts": TimeSeriesTransformer(hours=24)}``);
        the key ``"summary"`` overrides the :class:`SummaryTransformer` used with ``summary=True``.
    summary : bool, default False
        Wide & deep input: append the per-variable summary statistics of the time series (last/mean/min/max/std/
        count over the window, piecewise-linear encoded, see :mod:`healthfusion.features.summary_encoding`) to the
        ``static`` array, so a model's static branch sees them next to the encoded static features while its
        sequence encoder sees the raw series. Needs the ``"static"`` modality; by default the summaries use the
        ``"ts"`` transformer's window and variables.
    summary_stats : sequence of str, default :data:`~healthfusion.features.summary.SUMMARY_STATS`
        The per-variable statistics of the wide input (any of :data:`~healthfusion.features.summary.ALL_STATS`).

    Attributes
    ----------
    transformers_ : dict of fitted transformers
    label_spec_ : LabelSpec or None
    """

    def __init__(self, modalities: Sequence[str] = ("ts", "static"), label: str | None = None,
                 transformers: dict | None = None, summary: bool = False,
                 summary_stats: Sequence[str] = SUMMARY_STATS):
        self.modalities = tuple(modalities)
        self.label = label
        self.transformers = transformers or {}
        self.summary = summary
        self.summary_stats = tuple(summary_stats)

    def fit(self, cohort: Cohort, stay_ids: Sequence[str]) -> CohortFeaturizer:
        """Learn every modality's preprocessing from ``stay_ids`` (the training stays) only.

        Raises
        ------
        ValueError
            On an unknown modality, one the cohort has no table for, or ``summary=True`` without ``"static"``
            or without an events table.
        """
        unknown = [m for m in self.modalities if m not in _DEFAULTS]
        if unknown:
            raise ValueError(f"Unknown modality {unknown}; choose from {list(_DEFAULTS)}.")
        absent = [m for m in self.modalities if not cohort.has(_TABLE[m])]
        if absent:
            raise ValueError(f"Cohort {cohort.meta.name!r} has no data for modality {absent} "
                             f"(tables {[_TABLE[m] for m in absent]}); remove it from the modalities.")
        if self.summary and ("static" not in self.modalities or not cohort.has("events")):
            raise ValueError("summary=True appends time-series summaries to the static input: it needs the 'static' "
                             f"modality (got {list(self.modalities)}) and an events table; add 'static' or set "
                             "summary=False.")
        stay_ids = [str(s) for s in stay_ids]
        self.transformers_ = {}
        for m in self.modalities:
            tr = self.transformers.get(m) or _DEFAULTS[m]()
            self.transformers_[m] = tr.fit(cohort, stay_ids)
        if self.summary:
            ts = self.transformers_.get("ts")
            tr = self.transformers.get("summary") or (
                SummaryTransformer(variables=ts.variables_, hours=ts.hours, stats=self.summary_stats) if ts is not None
                else SummaryTransformer(stats=self.summary_stats)
            )
            self.transformers_["summary"] = tr.fit(cohort, stay_ids)
        self.label_spec_ = cohort.meta.label(self.label) if self.label else None
        return self

    def transform(self, cohort: Cohort, stay_ids: Sequence[str], with_target: bool = True) -> ArrayDataset:
        """Arrays for ``stay_ids`` in that order (see :mod:`healthfusion.features.batch` for keys and shapes).

        ``with_target=False`` skips the label (for scoring new patients without outcomes).
        """
        if not hasattr(self, "transformers_"):
            raise ValueError("CohortFeaturizer is not fitted; call fit(cohort, train_stay_ids) first.")
        stay_ids = [str(s) for s in stay_ids]
        arrays: dict[str, np.ndarray] = {}
        drops: dict[str, dict] = {}
        for m, tr in self.transformers_.items():
            if m == "ts":
                out = tr.transform(cohort, stay_ids)
                arrays.update({B.TS_VALUES: out["values"], B.TS_MASK: out["mask"], B.TS_DELTA: out["delta"],
                               B.TS_LENGTHS: out["lengths"]})
                arrays[B.present_key("ts")] = out["mask"].reshape(len(stay_ids), -1).any(axis=1)
                drops["events"] = tr.drop_counts_
            elif m == "static":
                arrays[B.STATIC] = tr.transform(cohort, stay_ids)
                ids = set(cohort.static["stay_id"])
                arrays[B.present_key("static")] = np.array([s in ids for s in stay_ids])
            elif m == "codes":
                arrays[B.CODES] = tr.transform(cohort, stay_ids)
                arrays[B.present_key("codes")] = (arrays[B.CODES] > 0).any(axis=1)
            elif m == "text" and isinstance(tr, HFTokenTransformer):
                out = tr.transform(cohort, stay_ids)
                arrays[B.TEXT], arrays[B.TEXT_MASK] = out["ids"], out["mask"]
                arrays[B.present_key("text")] = out["present"]
            elif m == "text":
                arrays[B.TEXT] = tr.transform(cohort, stay_ids)
                arrays[B.present_key("text")] = (arrays[B.TEXT] > 0).any(axis=1)
            elif m == "image":
                arrays[B.IMAGE], arrays[B.present_key("image")] = tr.transform(cohort, stay_ids)
        if "summary" in self.transformers_:
            wide = self.transformers_["summary"].transform(cohort, stay_ids)
            arrays[B.STATIC] = np.concatenate([arrays[B.STATIC], wide], axis=1)
        if with_target and self.label_spec_ is not None:
            arrays[B.TARGET] = encode_target(cohort.label(self.label_spec_.name).reindex(stay_ids), self.label_spec_)
        return ArrayDataset(arrays, meta={"stay_ids": stay_ids, "feature_drops": drops})

    @property
    def reads_records(self) -> bool:
        """Whether :meth:`transform_records` can featurize this pipeline (time series, static, their summaries)."""
        return set(self.transformers_) <= {"ts", "static", "summary"}

    def transform_records(self, records: PatientRecords) -> ArrayDataset:
        """:meth:`transform` of patients given as arrays (a scoring request), without building a cohort: the same
        fitted transformers on the same array code, so the arrays equal ``transform(records.to_cohort(), ids,
        with_target=False)``. No target.

        Raises
        ------
        ValueError
            The pipeline has a modality other than ``ts`` and ``static`` (see :attr:`reads_records`): featurize
            ``records.to_cohort()`` with :meth:`transform` instead.
        """
        if not hasattr(self, "transformers_"):
            raise ValueError("CohortFeaturizer is not fitted; call fit(cohort, train_stay_ids) first.")
        if not self.reads_records:
            raise ValueError(f"transform_records reads time series and static values; this pipeline also has "
                             f"{sorted(set(self.transformers_) - {'ts', 'static', 'summary'})}: use "
                             "transform(records.to_cohort(), ids).")
        n, ids = len(records), list(records.stay_ids)
        arrays: dict[str, np.ndarray] = {}
        drops: dict[str, dict] = {}
        ts = self.transformers_.get("ts")
        if ts is not None:
            out = ts.transform_arrays(records.event_stay, records.event_time, records.event_variable,
                                      records.event_value, records.prediction_time)
            arrays.update({B.TS_VALUES: out["values"], B.TS_MASK: out["mask"], B.TS_DELTA: out["delta"],
                           B.TS_LENGTHS: out["lengths"]})
            arrays[B.present_key("ts")] = out["mask"].reshape(n, -1).any(axis=1)
            drops["events"] = ts.drop_counts_
        st = self.transformers_.get("static")
        if st is not None:
            static = records.static or {}
            numeric = np.full((n, len(st.numeric_)), np.nan)
            for j, column in enumerate(st.numeric_):
                if column in static:
                    numeric[:, j] = [np.nan if v is None else v for v in static[column]]
            categorical = {c: np.array(static.get(c, [None] * n), dtype=object) for c in st.categorical_}
            arrays[B.STATIC] = st.transform_columns(numeric, categorical)
            arrays[B.present_key("static")] = np.full(n, records.static is not None)
        if "summary" in self.transformers_:
            summary = self.transformers_["summary"]
            window = in_window(records.events_frame(),
                               pd.Series(records.prediction_time, index=pd.Index(ids, name="stay_id")), summary.hours)
            arrays[B.STATIC] = np.concatenate([arrays[B.STATIC], summary.transform_events(window, ids)], axis=1)
        return ArrayDataset(arrays, meta={"stay_ids": ids, "feature_drops": drops})

    def input_dims(self) -> dict[str, int]:
        """Input sizes a model needs: n_variables, n_steps, static_dim, code_vocab, text_buckets (text_vocab with
        a local Hugging Face tokenizer), image_channels, image_size (only for the fitted modalities)."""
        t = self.transformers_
        dims = {}
        if "ts" in t:
            dims.update(n_variables=len(t["ts"].variables_), n_steps=t["ts"].n_steps)
        if "static" in t:
            dims["static_dim"] = len(t["static"].feature_names_) + (
                len(t["summary"].feature_names_) if "summary" in t else 0)
        if "codes" in t:
            dims["code_vocab"] = t["codes"].vocab_size
        if "text" in t and isinstance(t["text"], HFTokenTransformer):
            dims["text_vocab"] = t["text"].vocab_size_
        elif "text" in t:
            dims["text_buckets"] = t["text"].n_buckets
        if "image" in t:
            dims.update(image_channels=t["image"].channels_, image_size=t["image"].size)
        return dims

    def get_state(self) -> dict:
        """JSON-serialisable state of the fitted featurizer."""
        if not hasattr(self, "transformers_"):
            raise ValueError("CohortFeaturizer is not fitted; nothing to save.")
        return {
            "state_version": STATE_VERSION,
            "modalities": list(self.modalities),
            "label": self.label_spec_.to_dict() if self.label_spec_ else None,
            "transformers": {m: tr.get_state() for m, tr in self.transformers_.items()},
        }

    @classmethod
    def from_state(cls, state: dict) -> CohortFeaturizer:
        """Rebuild a fitted featurizer from :meth:`get_state` output.

        Raises
        ------
        ValueError
            If the state is from another version or names an unknown modality.
        """
        if state.get("state_version") != STATE_VERSION:
            raise ValueError(f"Preprocessing state version {state.get('state_version')!r} is not "
                             f"{STATE_VERSION}; re-train or re-save the model with this healthfusion.")
        label = LabelSpec.from_dict(state["label"]) if state.get("label") else None
        obj = cls(modalities=state["modalities"], label=label.name if label else None,
                  summary="summary" in state["transformers"])
        obj.transformers_ = {}
        for m, s in state["transformers"].items():
            if m == "summary":
                obj.transformers_[m] = SummaryTransformer.from_state(s)
                continue
            if m not in _DEFAULTS:
                raise ValueError(f"Preprocessing state names unknown modality {m!r}.")
            tr_class = HFTokenTransformer if m == "text" and s.get("type") == "HFTokenTransformer" else _DEFAULTS[m]
            obj.transformers_[m] = tr_class.from_state(s)
        obj.label_spec_ = label
        return obj


def engineered_features(cohort: Cohort, featurizer: CohortFeaturizer, stay_ids: Sequence[str],
                        stats: Sequence[str] = SUMMARY_STATS) -> pd.DataFrame:
    """Engineered features for classical models: per-variable summary statistics of each observable series
    (plausible values only, over the featurizer's window) plus the encoded static features.

    ``stats`` are any of :data:`~healthfusion.features.summary.ALL_STATS` (default: last/mean/min/max/std/count),
    columns ``"<variable>__<stat>"``."""
    stay_ids = [str(s) for s in stay_ids]
    blocks = []
    tr = featurizer.transformers_.get("ts")
    if tr is not None:
        events = window_events(cohort, stay_ids, tr.hours)
        blocks.append(summary_features(events, stay_ids, tr.variables_, stats).reset_index(drop=True))
    st = featurizer.transformers_.get("static")
    if st is not None:
        blocks.append(pd.DataFrame(st.transform(cohort, stay_ids), columns=st.feature_names_))
    if not blocks:
        raise ValueError("Classical baselines need the 'ts' or 'static' modality.")
    out = pd.concat(blocks, axis=1)
    out.index = pd.Index(stay_ids, name="stay_id")
    return out.astype(np.float64)
