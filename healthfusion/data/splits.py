"""Reproducible splits. Patient-level by default: all stays of a patient land in the same split."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.errors import CohortError

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
DEVELOPMENT_PATIENTS_FILE = "development_patients.json"  # in a run folder: who the model was trained/tuned on


def split_patients(
    stays: pd.DataFrame,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    stratify: pd.Series | None = None,
) -> pd.Series:
    """Assign every stay to a split, keeping each patient's stays together.

    Parameters
    ----------
    stays : DataFrame
        The cohort's stays table (``stay_id``, ``patient_id``).
    fractions : dict, default ``{"train": 0.7, "val": 0.15, "test": 0.15}``
        Split name -> fraction of patients; must sum to 1.
    seed : int
        The same seed gives the same assignment.
    stratify : Series, optional
        A label indexed by stay_id; patients are stratified by their maximum label (e.g. ever died), so each
        split keeps the prevalence. Missing labels form their own stratum.

    Returns
    -------
    Series indexed by stay_id (in ``stays`` order) with the split name of each stay.

    Raises
    ------
    CohortError
        If fractions do not sum to 1 or a split would be empty.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or any(f < 0 for f in fractions.values()):
        raise CohortError(f"Split fractions must be non-negative and sum to 1; got {fractions}.")
    patients = stays[["stay_id", "patient_id"]].copy()
    if stratify is not None:
        patients["stratum"] = patients["stay_id"].map(stratify).astype("float64")
        strata = patients.groupby("patient_id", sort=True)["stratum"].max().fillna(-1.0)
    else:
        strata = pd.Series(0.0, index=pd.Index(sorted(patients["patient_id"].unique()), name="patient_id"))
    rng = np.random.default_rng(seed)
    names = list(fractions)
    assignment: dict[str, str] = {}
    for _, group in strata.groupby(strata, sort=True):
        ids = group.index.to_numpy().copy()
        rng.shuffle(ids)
        bounds = np.round(np.cumsum([fractions[n] for n in names]) * len(ids)).astype(int)
        start = 0
        for name, stop in zip(names, bounds, strict=True):
            for pid in ids[start:stop]:
                assignment[pid] = name
            start = stop
    result = patients["patient_id"].map(assignment)
    result.index = patients["stay_id"].to_numpy()
    result.name = "split"
    empty = [n for n in names if fractions[n] > 0 and not (result == n).any()]
    if empty:
        raise CohortError(f"Split(s) {empty} got no patients ({patients['patient_id'].nunique()} patients in all); "
                          "use fewer splits or a larger cohort.")
    return result


def shared_patients(development: pd.DataFrame, external: pd.DataFrame) -> pd.Index:
    """Patients of ``external`` stays (an external test cohort) who also have stays in ``development`` (the stays a
    model was trained and tuned on). Both are stays tables with ``patient_id``; ids compare as text.

    A non-empty result means the external test is not independent of training: its metrics are optimistic for
    those patients. Patient ids are only comparable when both cohorts come from one source numbering them.

    Returns
    -------
    pandas.Index
        The shared patient ids, sorted.
    """
    dev = pd.Index(development["patient_id"].astype(str).unique())
    ext = pd.Index(external["patient_id"].astype(str).unique())
    return ext.intersection(dev).sort_values()


def _digests(patient_ids: Iterable, salt: str) -> set[str]:
    return {hashlib.sha256(f"{salt}:{p}".encode()).hexdigest()[:24] for p in map(str, patient_ids)}


def write_development_patients(folder: str | Path, patient_ids: Iterable) -> Path:
    """Write :data:`DEVELOPMENT_PATIENTS_FILE` into ``folder``: salted SHA-256 digests of the patients a model was
    trained and tuned on, so that scoring other data later can count shared patients
    (:func:`count_development_patients`) without the file listing identifiers in clear. The salt is stored beside
    the digests, so short identifiers can still be recovered by trying every candidate: the file is
    pseudonymous, not anonymous; keep it with the run folder."""
    salt = secrets.token_hex(8)
    path = Path(folder) / DEVELOPMENT_PATIENTS_FILE
    path.write_text(json.dumps({"salt": salt, "digests": sorted(_digests(pd.unique(pd.Series(list(patient_ids))),
                                                                         salt))}))
    return path


def count_development_patients(folder: str | Path, patient_ids: Iterable) -> int | None:
    """How many distinct ``patient_ids`` are among the development patients recorded in ``folder`` (see
    :func:`write_development_patients`); None when ``folder`` has no such record (or an unreadable one)."""
    path = Path(folder) / DEVELOPMENT_PATIENTS_FILE
    try:
        record = json.loads(path.read_text())
        salt, known = str(record["salt"]), set(record["digests"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return len(_digests(pd.unique(pd.Series(list(patient_ids), dtype=object).astype(str)), salt) & known)


#: a cohort's own split names (MedMNIST train/val/test, MEDS train/tuning/held_out, common spellings) -> ours
PREDEFINED_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                          "tuning": "val", "dev": "val", "test": "test", "held_out": "test", "heldout": "test"}


def predefined_split(stays: pd.DataFrame, column: str = "split") -> pd.Series:
    """Each stay's split read from the cohort's own ``column`` of ``stays`` (``split: predefined`` in a run
    config), mapped to ``train``/``val``/``test`` by :data:`PREDEFINED_SPLIT_NAMES` (case-insensitive: MedMNIST's
    ``train``/``val``/``test``, MEDS' ``train``/``tuning``/``held_out``).

    Returns
    -------
    Series indexed by stay_id (in ``stays`` order) with the split name of each stay; a split may be absent (a
    cohort without test stays gives a run without a test set).

    Raises
    ------
    CohortError
        ``column`` is not in ``stays`` (the columns present are named), a stay has no value there (the first such
        stay is named), or a value is not a known split name (the unknown values and their counts are named).
    """
    if column not in stays.columns:
        raise CohortError(f"split: predefined reads the stays' {column!r} column, which this cohort lacks (its stays "
                          f"have {list(stays.columns)}). Give the column's name (data.split.column), add one with "
                          "train/val/test per stay, or use a random split (data.split: {train: 0.7, val: 0.15, "
                          "test: 0.15}).")
    raw = stays[column]
    missing = raw.isna()
    if missing.any():
        first = stays.loc[missing, "stay_id"].iloc[0]
        raise CohortError(f"split: predefined: {int(missing.sum())} stay(s) have no value in column {column!r} "
                          f"(first: stay {first!r}); give every stay a split or use a random split.")
    names = raw.astype(str).str.strip().str.lower()
    mapped = names.map(PREDEFINED_SPLIT_NAMES)
    unknown = names[mapped.isna()]
    if len(unknown):
        counts = {str(k): int(v) for k, v in unknown.value_counts().items()}
        raise CohortError(f"split: predefined: column {column!r} has value(s) {counts} (value: stays) that are not "
                          f"split names; use one of {sorted(set(PREDEFINED_SPLIT_NAMES))} (train, val/tuning, "
                          "test/held_out).")
    result = pd.Series(mapped.to_numpy(), index=stays["stay_id"].to_numpy(), name="split")
    if not (result == "train").any() or not (result == "val").any():
        raise CohortError(f"split: predefined needs training and validation stays; column {column!r} gives "
                          f"{result.value_counts().to_dict()}. Add val (or tuning) stays, or use a random split.")
    return result
