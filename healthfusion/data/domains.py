"""Domain splits for transfer learning: a source domain and a low-resource target domain of one cohort.

A domain is a value (or set of values) of a domain attribute of the stays: ``care_unit`` (PhysioNet 2012 ICUType,
eICU unit type), ``site`` or ``region`` (eICU hospitals), ``age_group``, ``sex``, ``ethnicity``, or any other column
of the ``stays`` or ``static`` table (a numeric column is cut into bands with ``bins``).

The protocol, each step seeded:

1. :func:`split_domains`: target stays = those whose attribute is in ``target``; source stays = those in ``source``
   (default: every other value). Source and target are **disjoint by patient**: a patient with a stay in the
   target domain gives all of their stays to the target (their source stays are dropped and counted).
2. :func:`target_partition`: the target's patients are split (stratified by outcome) into a **test** set that no
   training or model selection ever sees, and a **pool** of training stays.
3. :func:`labelled_order` orders the pool so that every prefix is a stratified sample of it (nested: the 50 stays
   of size 50 are among the 100 of size 100); :func:`labelled_subset` takes the first ``n``. The whole pool, without
   labels, is the target's unlabelled data for DANN/MMD.

Example::

    split = split_domains(cohort, "care_unit", target=["CCU"])
    part = target_partition(cohort, split.target_ids, label="in_hospital_death", test_fraction=0.3, seed=0)
    order = labelled_order(cohort, part.pool_ids, "in_hospital_death", seed=0)
    labelled = labelled_subset(order, 100)                       # 100 labelled target stays
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import CohortError
from healthfusion.data.schema import CohortMeta
from healthfusion.data.splits import split_patients

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainSplit:
    """Source and target stays of one cohort (stay ids as strings, in cohort order).

    Attributes
    ----------
    column : str
        The domain attribute.
    source_ids, target_ids : list of str
        Disjoint by patient.
    dropped_overlap : int
        Source-domain stays dropped because their patient also has a target-domain stay.
    unassigned : int
        Stays whose attribute is in neither domain (or missing).
    """

    column: str
    source_values: tuple[str, ...]
    target_values: tuple[str, ...]
    source_ids: list[str]
    target_ids: list[str]
    dropped_overlap: int
    unassigned: int

    def summary(self) -> dict:
        """JSON-serialisable description (counts and values)."""
        return {"column": self.column, "source_values": list(self.source_values),
                "target_values": list(self.target_values), "n_source": len(self.source_ids),
                "n_target": len(self.target_ids), "dropped_overlap": self.dropped_overlap,
                "unassigned": self.unassigned}


@dataclass(frozen=True)
class TargetPartition:
    """The target domain split into a held-out test set and a training pool (disjoint by patient)."""

    pool_ids: list[str]
    test_ids: list[str]


def concat_cohorts(cohorts: Sequence[Cohort], names: Sequence[str] | None = None, column: str = "source") -> Cohort:
    """One in-memory cohort holding several cohorts of the same source (e.g. PhysioNet 2012 sets A and B); with
    ``names`` (one per cohort), the stays table gets a ``column`` (default ``source``) naming each stay's cohort,
    a domain column like ``site`` (subgroup audits, transfer domains).

    Raises
    ------
    CohortError
        If no cohort is given, or a stay id appears in more than one cohort.
    """
    cohorts = list(cohorts)
    if not cohorts:
        raise CohortError("concat_cohorts needs at least one cohort.")
    if names is not None and len(names) != len(cohorts):
        raise CohortError(f"concat_cohorts got {len(names)} names for {len(cohorts)} cohorts; give one per cohort.")
    if len(cohorts) == 1 and names is None:
        return cohorts[0]
    ids = pd.concat([c.stays["stay_id"] for c in cohorts], ignore_index=True)
    if ids.duplicated().any():
        raise CohortError(f"Stay id {ids[ids.duplicated()].iloc[0]!r} appears in more than one of the cohorts to "
                          "pool; pool only cohorts with distinct stays.")
    tables = {}
    for name in ("stays", "static", "events", "codes", "notes", "labels"):
        parts = [getattr(c, name) for c in cohorts]
        if any(p is None for p in parts):
            continue
        if name == "stays" and names is not None:
            parts = [p.assign(**{column: n}) for p, n in zip(parts, names, strict=True)]
        tables[name] = pd.concat(parts, ignore_index=True)
    meta = CohortMeta.from_dict(cohorts[0].meta.to_dict())  # a copy: the first cohort's meta stays as it was
    for c in cohorts[1:]:
        for col, kind in c.meta.feature_types.items():
            meta.feature_types.setdefault(col, kind)
    return Cohort(tables.pop("stays"), meta=meta, **tables)


def domain_values(cohort: Cohort, column: str, bins: Sequence[float] | None = None) -> pd.Series:
    """The domain attribute of every stay, as strings indexed by stay_id (missing: ``None``).

    ``column`` is looked up in the ``stays`` table first, then in ``static``. A numeric column needs ``bins``
    (band edges, e.g. ``[0, 40, 60, 80, 200]``); bands are named ``"[40, 60)"``.

    Raises
    ------
    CohortError
        If the column is in neither table, or is numeric without ``bins``.
    """
    stays = cohort.stays.set_index("stay_id")
    if column in stays.columns:
        values = stays[column]
    elif cohort.static is not None and column in cohort.static.columns:
        values = cohort.static.set_index("stay_id")[column].reindex(stays.index)
    else:
        static_cols = [] if cohort.static is None else [c for c in cohort.static.columns if c != "stay_id"]
        raise CohortError(f"Domain column {column!r} is neither a stays column ({list(stays.columns)}) nor a static "
                          f"column ({static_cols}) of cohort {cohort.meta.name!r}.")
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if bins is not None:
        edges = [float(b) for b in bins]
        if len(edges) < 2 or any(b >= a for a, b in zip(edges[1:], edges[:-1], strict=True)):
            raise CohortError(f"bins must be at least two increasing edges; got {list(bins)}.")
        number = pd.to_numeric(values, errors="coerce")
        cut = pd.cut(number, edges, right=False)
        labels = [f"[{iv.left:g}, {iv.right:g})" for iv in cut.cat.categories]
        out = pd.Series(pd.Categorical.from_codes(cut.cat.codes, categories=labels, validate=False),
                        index=values.index).astype(object)
        return out.where(cut.notna(), None)
    if numeric and values.nunique() > 20:
        raise CohortError(f"Domain column {column!r} is numeric with {values.nunique()} values; give bins "
                          "(band edges) to cut it into domains, e.g. bins: [0, 40, 60, 80, 200].")
    out = values.astype(object).where(values.notna(), None)
    return out.map(lambda v: v if v is None else str(v))


def split_domains(cohort: Cohort, column: str, target: Sequence[str], source: Sequence[str] | None = None,
                  bins: Sequence[float] | None = None) -> DomainSplit:
    """Source and target stays by the domain attribute ``column``, disjoint by patient.

    Parameters
    ----------
    cohort : Cohort
    column : str
        Domain attribute (see :func:`domain_values`).
    target : sequence of str
        Attribute value(s) forming the target domain.
    source : sequence of str, optional
        Value(s) forming the source domain; default every value not in ``target`` (missing values excluded).
    bins : sequence of float, optional
        Band edges for a numeric column.

    Raises
    ------
    CohortError
        Unknown values (the known ones are listed), overlapping source and target values, or an empty domain.
    """
    values = domain_values(cohort, column, bins)
    known = sorted({v for v in values if v is not None})
    target = tuple(str(v) for v in target)
    unknown = [v for v in (*target, *(source or ())) if v not in known]
    if unknown:
        raise CohortError(f"Domain value(s) {unknown} of column {column!r} do not occur in cohort "
                          f"{cohort.meta.name!r}; its values are {known}.")
    source = tuple(str(v) for v in source) if source is not None else tuple(v for v in known if v not in target)
    both = sorted(set(source) & set(target))
    if both:
        raise CohortError(f"Domain value(s) {both} are in both source and target; a stay must be in one domain.")
    is_target = values.isin(target).to_numpy()
    is_source = values.isin(source).to_numpy()
    patients = cohort.stays.set_index("stay_id")["patient_id"].reindex(values.index)
    target_patients = set(patients[is_target])
    overlap = is_source & patients.isin(target_patients).to_numpy()
    if overlap.any():
        log.info("Dropping %d source stays of %d patients who also have target-domain stays",
                 int(overlap.sum()), patients[overlap].nunique())
    keep_source = is_source & ~overlap
    split = DomainSplit(
        column=column, source_values=source, target_values=target,
        source_ids=values.index[keep_source].astype(str).tolist(),
        target_ids=values.index[is_target].astype(str).tolist(),
        dropped_overlap=int(overlap.sum()), unassigned=int((~is_target & ~is_source).sum()),
    )
    for name, ids in (("source", split.source_ids), ("target", split.target_ids)):
        if not ids:
            raise CohortError(f"The {name} domain ({column} in {list(source if name == 'source' else target)}) "
                              "has no stays; choose other domain values.")
    return split


def _labels(cohort: Cohort, ids: Sequence[str], label: str) -> pd.Series:
    y = cohort.label(label).reindex([str(i) for i in ids])
    return y


def labelled_ids(cohort: Cohort, ids: Sequence[str], label: str) -> list[str]:
    """The stays of ``ids`` whose ``label`` is known, in order."""
    y = _labels(cohort, ids, label)
    return y.index[y.notna()].tolist()


def target_partition(cohort: Cohort, target_ids: Sequence[str], label: str, test_fraction: float = 0.3,
                     seed: int = 0) -> TargetPartition:
    """Split the target domain by patient, stratified by ``label``, into a test set and a training pool.

    Stays without a label go to the pool (they are unlabelled data); the test set holds labelled stays only.

    Raises
    ------
    CohortError
        If ``test_fraction`` is not in (0, 1) or either part would be empty.
    """
    if not 0.0 < test_fraction < 1.0:
        raise CohortError(f"test_fraction must be in (0, 1); got {test_fraction}.")
    ids = [str(i) for i in target_ids]
    stays = cohort.stays.set_index("stay_id").loc[ids].reset_index()
    y = _labels(cohort, ids, label)
    parts = split_patients(stays, {"pool": 1.0 - test_fraction, "test": test_fraction}, seed=seed, stratify=y)
    test = [s for s in ids if parts[s] == "test" and not pd.isna(y[s])]
    pool = [s for s in ids if s not in set(test)]
    if not test or not pool:
        raise CohortError(f"The target domain ({len(ids)} stays) is too small to hold out a test set of "
                          f"{test_fraction:.0%}; use a larger target domain.")
    return TargetPartition(pool_ids=pool, test_ids=test)


def labelled_order(cohort: Cohort, pool_ids: Sequence[str], label: str, seed: int = 0) -> list[str]:
    """The labelled stays of the pool in an order whose every prefix is a stratified random sample.

    Patients are shuffled within each outcome stratum (a patient's stratum is their maximum label) and interleaved
    by rank fraction, so the first ``n`` stays hold about ``n * prevalence`` positives; a patient's stays stay
    together. Prefixes are nested: a larger labelled set contains every smaller one of the same seed.
    """
    ids = labelled_ids(cohort, pool_ids, label)
    if not ids:
        return []
    y = _labels(cohort, ids, label).astype(float)
    patient = cohort.stays.set_index("stay_id")["patient_id"].reindex(ids)
    stratum = y.groupby(patient.to_numpy()).max()
    rng = np.random.default_rng([seed, 7])
    keys = {}
    for _, group in stratum.groupby(stratum, sort=True):
        members = group.index.to_numpy().copy()
        rng.shuffle(members)
        for rank, pid in enumerate(members):
            keys[pid] = (rank + rng.uniform(0.0, 1.0)) / len(members)
    order = sorted(keys, key=lambda pid: keys[pid])
    by_patient = pd.Series(ids, index=patient.to_numpy()).groupby(level=0).agg(list)
    return [s for pid in order for s in by_patient[pid]]


def labelled_subset(order: Sequence[str], size: int | str) -> list[str]:
    """The first ``size`` stays of a :func:`labelled_order` (``"all"``: every one).

    Raises
    ------
    CohortError
        If ``size`` is not a positive int or ``"all"``, or exceeds the labelled pool.
    """
    if size == "all":
        return list(order)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise CohortError(f"A target size must be a positive integer or 'all'; got {size!r}.")
    if size > len(order):
        raise CohortError(f"Requested {size} labelled target stays but the target pool has {len(order)}; "
                          "use a smaller size or 'all'.")
    return list(order[:size])
