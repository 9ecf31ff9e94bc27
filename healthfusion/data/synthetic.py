"""An embedded synthetic multimodal ICU cohort: healthfusion's default data, any size, from a seed.

The cohort looks like a small multi-site ICU database (PhysioNet 2012 variable names, ICD-10 codes, notes and a
small image per stay) and is generated so that a known part of each outcome is visible only in one modality.

Generative story
----------------
Stays are generated in blocks of :data:`BLOCK` stays; block ``b`` draws only from
``np.random.default_rng([seed, b, k])`` (one stream ``k`` per modality), so the cohort depends on ``(seed, n_stays)``
only, not on ``chunk_size``, and the first ``n`` stays of a larger cohort equal the cohort of ``n`` stays.

*Patients.* A stay is followed by a readmission of the same patient with probability 0.13 (within a block). A
patient carries ``site`` (A-D), ``age``, ``sex``, ``ethnicity``, a latent ``frailty`` ~ N(0, 1) and ten chronic
comorbidities (Bernoulli in age and frailty). A death ends the patient: the next stay then starts a new patient.

*Stay latents.* ``care_unit`` (MICU, SICU, CCU, CSRU; mix depends on site), ``phenotype`` (sepsis, cardiac,
respiratory, trauma, other; depends on unit), ``admission_type``; ``severity`` ~ N(mean by phenotype, site,
elective, frailty; sd 1); ``trend`` ~ N(0, 0.6) (improving < 0 < deteriorating); ``lesion`` = 0 or U(0.6, 1.6)
(present with p 0.25-0.55, more often in respiratory and sepsis); ``goals_of_care`` ~ Bernoulli (~8 %, older and
frailer more often); ``confusion`` ~ Bernoulli (sicker, older, alcohol).

*The exact mortality model* (``mortality`` ~ Bernoulli(sigmoid(logit))):

    logit = -3.9 + 1.0 * severity + 0.8 * trend + 1.3 * lesion + 0.35 * (age - 65) / 10
            + sum(w_k * comorbidity_k) + 2.2 * goals_of_care + site_offset   (A 0, B +0.35, C -0.35, D +0.2)

with ``w`` = metastatic cancer 1.0, cirrhosis 0.9, heart failure 0.4, CKD 0.3, COPD 0.3, alcohol 0.2,
diabetes 0.1, atrial fibrillation 0.1, hypertension 0, obesity -0.1 (see :data:`COMORBIDITIES`).

*Which modality reveals what.*
``events`` (time series): an hourly latent acuity ``severity + trend * t / hours + AR(1) noise`` drives every vital
and lab; sicker stays are charted more often and get lactate/blood gases ordered (informative missingness).
``images``: only the lesion (blob size and brightness grow with it), for the ~70 % of stays with an image (site
dependent), plus site-specific brightness, noise and a scanner marker (a shortcut to the site, not the outcome).
``static`` and ``codes``: age, sex, body size, admission type and the comorbidities (count in ``static``, each one
as an ICD-10 code at time 0 in ``codes``) and often an admission diagnosis code revealing the phenotype.
``notes``: the goals-of-care discussion (words only notes carry), confusion, phenotype and severity phrases.

*Other labels.* ``los_days`` = (hours + extra) / 24 with log extra ~ severity, unit; ``los_gt_3d``;
``phenotype``; ``diagnoses`` (multilabel: sepsis, aki, ards, heart_failure, pneumonia, delirium, from phenotype,
severity, trend, CKD, lesion and confusion); ``readmission_30d`` (next stay of the patient within 30 days; null
for deaths).

*Planted traps for the pipeline.* ~0.2 % of events hold impossible values (HR 0, Temp 370, pH 74, placeholders
99999) that :mod:`healthfusion.data.plausibility` removes; ~15 % of stays have events in the 12 h after the
prediction time (deteriorating before a death), some deaths have an ``R99`` code at discharge and some stays a
discharge note stating the outcome: all after ``prediction_time``, so only a leak lets a model see them.

Example::

    cohort = generate(500, seed=1)                      # in memory
    write("runs/synth", 1_000_000, chunk_size=5000)   # streamed to a cohort folder, memory flat in n
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort, CohortWriter
from healthfusion.data.errors import SourceError
from healthfusion.data.schema import CohortMeta, LabelSpec

# the generative model's constants are the cohort's public vocabulary (sites, units, phenotypes, labels, variables)
from healthfusion.data.synthetic_model import (
    ADMISSION_TYPES,
    AGE_GROUPS,
    BLOCK,
    CARE_UNITS,
    COMORBIDITIES,
    DIAGNOSES,
    ETHNICITIES,
    FEATURE_TYPES,
    LABELS,
    PHENOTYPES,
    POST_WINDOW_HOURS,
    SITES,
    VARIABLES,
    _codes,
    _events,
    _images,
    _latents,
    _notes,
)

log = logging.getLogger(__name__)

__all__ = ["generate", "write", "build", "ground_truth", "ADMISSION_TYPES", "AGE_GROUPS", "CARE_UNITS",
           "COMORBIDITIES", "DIAGNOSES", "ETHNICITIES", "FEATURE_TYPES", "LABELS", "PHENOTYPES",
           "POST_WINDOW_HOURS", "SITES", "VARIABLES"]


def _block(seed: int, b: int, keep: int, hours: float, image_size: int) -> dict:
    """Tables of block ``b`` as column arrays with integer stay indices, cut to its first ``keep`` stays."""
    rngs = [np.random.default_rng([seed, b, k]) for k in range(5)]
    start = b * BLOCK
    lat = _latents(rngs[0], start, hours)
    ev = _events(rngs[1], lat, hours)
    im = _images(rngs[2], lat, hours, image_size)
    no = _notes(rngs[3], lat, hours)
    co = _codes(rngs[4], lat)

    def cut(stay, *cols):  # rows come sorted by stay (and time)
        m = stay < keep
        return (stay[m] + start, *(c[m] for c in cols))

    idx = np.arange(keep)
    return {
        "lat": lat, "keep": keep,
        "events": cut(*ev), "images": cut(*im), "notes": cut(*no), "codes": cut(*co),
        "stays": (idx + start, lat.head[:keep] + start),
    }


def _stay_ids(index: np.ndarray) -> np.ndarray:
    return np.char.add("S", np.char.zfill(index.astype(str), 8)).astype(object)


def _take(values, index: np.ndarray) -> pd.Series:
    """Strings ``values[index]`` as an Arrow-backed column (no Python object per row)."""
    return pa.array(np.asarray(values, dtype=object), type=pa.large_string()).take(pa.array(index)).to_pandas()


def _frames(blocks: list[dict], hours: float, positive_class: int = 1) -> tuple[dict[str, pd.DataFrame], np.ndarray]:
    """Turn consecutive blocks into the cohort's tables (DataFrames) and the image array."""
    first = blocks[0]["stays"][0][0]
    gidx = np.concatenate([b["stays"][0] for b in blocks])
    ids = _stay_ids(gidx)

    def lat(name):
        return np.concatenate([getattr(b["lat"], name)[: b["keep"]] for b in blocks])

    def cat(table, i):
        return np.concatenate([b[table][i] for b in blocks])

    age = lat("age")
    site = np.asarray(SITES, dtype=object)[lat("site")]
    sex = np.where(lat("male"), "M", "F").astype(object)
    stays = pd.DataFrame({
        "stay_id": ids, "patient_id": np.char.add("P", np.char.zfill(cat("stays", 1).astype(str), 8)).astype(object),
        "prediction_time": np.full(ids.size, float(hours)), "site": site,
        "care_unit": np.asarray(CARE_UNITS, dtype=object)[lat("unit")],
        "age_group": np.asarray(AGE_GROUPS, dtype=object)[np.searchsorted([45, 65, 80], age, side="right")],
        "sex": sex, "ethnicity": np.asarray(ETHNICITIES, dtype=object)[lat("ethnicity")],
    })
    comorb = lat("comorb")
    static = pd.DataFrame({
        "stay_id": ids, "age": age.astype(np.int64), "sex": sex,
        "weight": lat("weight"), "height": lat("height"),
        "admission_type": np.asarray(ADMISSION_TYPES, dtype=object)[lat("admission")],
        "comorbidity_count": comorb.sum(axis=1).astype(np.int64), "prior_icu_stays": lat("prior").astype(np.int64),
    })
    los_days = lat("los_h") / 24.0
    diag = lat("diagnoses")
    flat = pa.array(np.asarray(DIAGNOSES, dtype=object)[np.nonzero(diag)[1]], type=pa.string())
    offsets = pa.array(np.r_[0, np.cumsum(diag.sum(axis=1))].astype(np.int32))
    diagnoses = pa.ListArray.from_arrays(offsets, flat).to_pandas()  # arrays of class names, as when loaded
    labels = pd.DataFrame({
        "stay_id": ids, "mortality": (lat("died") == positive_class).astype(np.int64), "los_days": los_days.round(3),
        "los_gt_3d": (los_days > 3).astype(np.int64),
        "phenotype": np.asarray(PHENOTYPES, dtype=object)[lat("pheno")],
        "diagnoses": diagnoses,
        "readmission_30d": lat("readmit"),
    })
    events = pd.DataFrame({"stay_id": _take(ids, cat("events", 0) - first), "time": cat("events", 1),
                           "variable": _take(VARIABLES, cat("events", 2)), "value": cat("events", 3)}, copy=False)
    codes = pd.DataFrame({"stay_id": ids[cat("codes", 0) - first], "time": cat("codes", 1), "system": "icd10",
                          "code": cat("codes", 2)})
    notes = pd.DataFrame({"stay_id": ids[cat("notes", 0) - first], "time": cat("notes", 1), "text": cat("notes", 2)})
    img_stay = cat("images", 0)
    img_ids = ids[img_stay - first]
    nth = np.arange(img_stay.size) - np.searchsorted(img_stay, img_stay)  # 0 or 1 within a stay
    images = pd.DataFrame({"stay_id": img_ids, "image_id": img_ids + np.char.add("-img", nth.astype(str)).astype(object),
                           "time": cat("images", 1)})
    tables = {"stays": stays, "static": static, "events": events, "codes": codes, "notes": notes, "images": images,
              "labels": labels}
    for df in tables.values():  # an empty object column would be written as Arrow's null type, not string
        for col in df.columns:
            if df[col].dtype == object and col != "diagnoses":
                df[col] = df[col].astype("str")
    return tables, cat("images", 2)


def _check(n_stays, seed, image_size, hours, chunk_size, positive_class=1) -> None:
    def bad(name, value, expected):
        raise ValueError(f"synthetic: {name} must be {expected}; got {value!r}.")

    if isinstance(n_stays, bool) or not isinstance(n_stays, (int, np.integer)) or n_stays < 1:
        bad("n_stays", n_stays, "a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        bad("seed", seed, "a non-negative integer")
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        bad("image_size", image_size, "an integer >= 8 (pixels per side)")
    if not isinstance(hours, (int, float, np.number)) or not 6 <= hours <= 24 * 30:
        bad("hours", hours, "a number of hours between 6 and 720 (the prediction time)")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        bad("chunk_size", chunk_size, "a positive integer (stays per written chunk)")
    if isinstance(positive_class, bool) or positive_class not in (0, 1):
        bad("positive_class", positive_class, "1 (mortality = died, the default) or 0 (mortality = survived)")


def _meta(n_stays: int, seed: int, hours: float, positive_class: int = 1) -> CohortMeta:
    labels = list(LABELS)
    if positive_class == 0:
        labels = [LabelSpec("mortality", "binary", description="Survived to hospital discharge (synthetic, "
                            "positive_class 0: 1 = survived).") if spec.name == "mortality" else spec
                  for spec in labels]
    return CohortMeta(
        name="synthetic", source="synthetic", feature_types=dict(FEATURE_TYPES), labels=labels,
        derived={"age_group": ["age"], "sex": ["sex"]},
        description=(f"Synthetic multimodal ICU cohort: {n_stays} stays, seed {seed}, prediction at {hours:g} h. "
                     "Generative story and exact mortality logit: healthfusion.data.synthetic."),
    )


def _chunks(n_stays: int, seed: int, hours: float, image_size: int, chunk_size: int, positive_class: int = 1):
    """Yield (tables, image arrays) for consecutive chunks of about ``chunk_size`` stays (whole blocks)."""
    n_blocks = -(-n_stays // BLOCK)
    per_chunk = max(1, round(chunk_size / BLOCK))
    for b0 in range(0, n_blocks, per_chunk):
        blocks = [_block(seed, b, min(BLOCK, n_stays - b * BLOCK), hours, image_size)
                  for b in range(b0, min(b0 + per_chunk, n_blocks))]
        chunk = _frames(blocks, hours, positive_class)
        del blocks  # keep one chunk alive at a time
        yield chunk
        del chunk


def _account(acc: RowAccounting, tables: dict[str, pd.DataFrame]) -> None:
    for name, df in tables.items():  # generated rows are all used; preprocessing drops the implausible ones later
        acc.read(name, len(df))
        acc.use(name, len(df))


def generate(n_stays: int = 2000, seed: int = 0, *, image_size: int = 28, hours: float = 48,
             chunk_size: int = 5000, positive_class: int = 1) -> Cohort:
    """An in-memory synthetic cohort of ``n_stays`` stays (use :func:`write` for large ones).

    Parameters
    ----------
    n_stays : int, default 2000
    seed : int, default 0
        The same (seed, n_stays, image_size, hours) give identical tables; ``chunk_size`` does not matter.
    image_size : int, default 28
        Images are ``[1, image_size, image_size]`` uint8.
    hours : float, default 48
        Prediction time (hours since admission) of every stay; events run to ``hours`` plus a few up to 12 h after.
    chunk_size : int, default 5000
        Stays generated at a time (rounded to whole blocks of :data:`BLOCK`).
    positive_class : int, default 1
        What the binary ``mortality`` label calls 1: death (1) or survival (0, a model of the chance to survive;
        the same stays and outcomes, the label flipped). A model folder saves it with the reader options.

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Example::

        cohort = generate(200, seed=3)
        cohort.label("mortality").mean()
    """
    _check(n_stays, seed, image_size, hours, chunk_size, positive_class)
    parts, arrays = [], []
    for tables, images in _chunks(n_stays, seed, hours, image_size, chunk_size, positive_class):
        parts.append(tables)
        arrays.append(images)
    tables = {name: pd.concat([p[name] for p in parts], ignore_index=True) for name in parts[0]}
    tables["images"] = tables["images"].assign(part=0, offset=np.arange(len(tables["images"])))
    acc = RowAccounting()
    _account(acc, tables)
    return Cohort(tables.pop("stays"), **tables, image_arrays=np.concatenate(arrays),
                  meta=_meta(n_stays, seed, hours, positive_class), accounting=acc)


def write(path: str | Path, n_stays: int, seed: int = 0, *, chunk_size: int = 5000,
          progress: Callable[[int, int], None] | None = None, image_size: int = 28, hours: float = 48,
          positive_class: int = 1) -> Path:
    """Stream a synthetic cohort of ``n_stays`` stays to the cohort folder ``path``; memory does not grow with n.

    The tables equal those of :func:`generate` with the same arguments. ``progress(done, total)`` is called after
    each chunk. Other parameters as in :func:`generate`. Returns the folder.

    Raises
    ------
    ValueError
        If a parameter is out of range.
    """
    _check(n_stays, seed, image_size, hours, chunk_size, positive_class)
    acc = RowAccounting()
    done = 0
    with CohortWriter(path, _meta(n_stays, seed, hours, positive_class), acc) as writer:
        for tables, images in _chunks(n_stays, seed, hours, image_size, chunk_size, positive_class):
            _account(acc, tables)
            writer.append(image_arrays=images, **tables)
            done += len(tables["stays"])
            del tables, images  # free this chunk before the next is generated
            if progress is not None:
                progress(done, n_stays)
    return Path(path)


def build(path: str | Path, *, task: str | None = None, progress: bool | Callable[[int, int], None] = False,
          n_stays: int = 2000, seed: int = 0, **options) -> Cohort:
    """The ``synthetic`` source: write a synthetic cohort to ``path`` and open it.

    Parameters
    ----------
    path : str or Path
        Cohort folder to write.
    task : str, optional
        The cohort carries every label; a task, if given, must name one of them (see :data:`LABELS`).
    progress : bool or callable
        True logs each chunk at INFO level; a callable gets ``(done, total)``.
    n_stays, seed, **options
        Passed to :func:`write` (``chunk_size``, ``image_size``, ``hours``, ``positive_class``).

    Raises
    ------
    SourceError
        If ``task`` is not a label of the cohort or an option is unknown.
    ValueError
        If an option is out of range.
    """
    names = [spec.name for spec in LABELS]
    if task is not None and task not in names:
        raise SourceError(f"Task {task!r} is not a label of the synthetic cohort; labels are {names}.")
    unknown = set(options) - {"chunk_size", "image_size", "hours", "positive_class"}
    if unknown:
        raise SourceError(f"Unknown option(s) {sorted(unknown)} for the synthetic source; it takes n_stays, seed, "
                          "chunk_size, image_size, hours and positive_class.")
    def log_progress(done: int, total: int) -> None:
        log.info("synthetic cohort: %d / %d stays written", done, total)

    callback = log_progress if progress is True else (progress or None)
    write(path, n_stays, seed, progress=callback, **options)
    return Cohort.load(path)


def ground_truth(n_stays: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The latent variables of each stay (for tests and teaching, never for models), indexed by stay_id:
    severity, trend, lesion, goals_of_care, confusion, frailty and the exact mortality ``logit``."""
    _check(n_stays, seed, 28, 48, 1)
    frames = []
    for b in range(-(-n_stays // BLOCK)):
        keep = min(BLOCK, n_stays - b * BLOCK)
        lat = _latents(np.random.default_rng([seed, b, 0]), b * BLOCK, 48.0)
        frames.append(pd.DataFrame({
            "severity": lat.severity, "trend": lat.trend, "lesion": lat.lesion, "goals_of_care": lat.goals,
            "confusion": lat.confusion, "frailty": lat.frailty, "logit": lat.logit,
        }, index=pd.Index(_stay_ids(np.arange(b * BLOCK, b * BLOCK + BLOCK)), name="stay_id")).iloc[:keep])
    return pd.concat(frames)
