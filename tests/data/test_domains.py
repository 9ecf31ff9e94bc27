"""Domain splits: patient-disjoint source/target, held-out target test set, nested stratified labelled subsets."""

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.cohort import Cohort
from healthfusion.data.domains import (
    concat_cohorts,
    domain_values,
    labelled_order,
    labelled_subset,
    split_domains,
    target_partition,
)
from healthfusion.data.errors import CohortError
from healthfusion.data.schema import CohortMeta, LabelSpec


def _cohort(n=400, seed=0, prevalence=0.2, shared_patients=0) -> Cohort:
    """Stays s0..; units A/B/C; patient p_i = stay i, except the first ``shared_patients`` B stays reuse the
    patient of a C stay (a patient seen in two domains)."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(n)]
    unit = np.array(["A", "B", "C"])[np.arange(n) % 3]
    patients = [f"p{i}" for i in range(n)]
    c_stays = [i for i in range(n) if unit[i] == "C"]
    b_stays = [i for i in range(n) if unit[i] == "B"]
    for k in range(shared_patients):
        patients[b_stays[k]] = patients[c_stays[k]]
    stays = pd.DataFrame({"stay_id": ids, "patient_id": patients, "prediction_time": 24.0, "care_unit": unit})
    static = pd.DataFrame({"stay_id": ids, "age": rng.uniform(20, 90, n)})
    y = (rng.random(n) < prevalence).astype(float)
    y[5] = np.nan
    labels = pd.DataFrame({"stay_id": ids, "death": y})
    meta = CohortMeta(name="dom", labels=[LabelSpec("death", "binary")])
    return Cohort(stays, static=static, labels=labels, meta=meta)


def test_split_domains_is_disjoint_by_patient_and_counts_the_dropped_stays():
    cohort = _cohort(shared_patients=7)
    split = split_domains(cohort, "care_unit", target=["C"])
    assert split.source_values == ("A", "B")
    patients = cohort.stays.set_index("stay_id")["patient_id"]
    assert not set(patients[split.source_ids]) & set(patients[split.target_ids])
    assert split.dropped_overlap == 7
    assert len(split.source_ids) + len(split.target_ids) + 7 == len(cohort)


def test_split_domains_explicit_source_leaves_other_values_unassigned():
    split = split_domains(_cohort(), "care_unit", target=["C"], source=["A"])
    assert split.unassigned == sum(1 for i in range(400) if i % 3 == 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"target": ["Z"]}, "do not occur"),
    ({"target": ["C"], "source": ["C", "A"]}, "both source and target"),
])
def test_split_domains_rejects_bad_values(kwargs, match):
    with pytest.raises(CohortError, match=match):
        split_domains(_cohort(), "care_unit", **kwargs)


def test_domain_values_bins_a_numeric_static_column_and_requires_bins():
    cohort = _cohort()
    with pytest.raises(CohortError, match="bins"):
        domain_values(cohort, "age")
    bands = domain_values(cohort, "age", bins=[0, 50, 200])
    assert set(bands) == {"[0, 50)", "[50, 200)"}
    with pytest.raises(CohortError, match="neither a stays column"):
        domain_values(cohort, "nope")


def test_target_partition_holds_out_labelled_test_stays_disjoint_by_patient():
    cohort = _cohort()
    split = split_domains(cohort, "care_unit", target=["C", "B"])
    part = target_partition(cohort, split.target_ids, "death", test_fraction=0.3, seed=1)
    assert not set(part.pool_ids) & set(part.test_ids)
    assert sorted(part.pool_ids + part.test_ids) == sorted(split.target_ids)
    assert cohort.label("death").reindex(part.test_ids).notna().all()
    assert "s5" not in part.test_ids  # unlabelled: pool only


def test_labelled_order_prefixes_are_nested_stratified_and_seeded():
    cohort = _cohort(n=900, prevalence=0.15)
    ids = cohort.stays["stay_id"].tolist()
    order = labelled_order(cohort, ids, "death", seed=3)
    assert "s5" not in order and len(order) == len(set(order)) == len(ids) - 1
    y = cohort.label("death")
    prevalence = y.reindex(order).mean()
    for n in (20, 50, 100, 300):
        assert abs(y.reindex(order[:n]).mean() - prevalence) <= 1.5 / n + 0.01
    assert labelled_subset(order, 50) == order[:50] and set(labelled_subset(order, 50)) <= set(order[:100])
    assert labelled_order(cohort, ids, "death", seed=3) == order
    assert labelled_order(cohort, ids, "death", seed=4) != order
    assert labelled_subset(order, "all") == order


@pytest.mark.parametrize("size", [0, -3, 10_000, "most", True])
def test_labelled_subset_rejects_bad_sizes(size):
    with pytest.raises(CohortError):
        labelled_subset(["a", "b"], size)


def test_concat_cohorts_pools_sets_and_rejects_shared_stays():
    a, b = _cohort(n=30), _cohort(n=30)
    with pytest.raises(CohortError, match="more than one"):
        concat_cohorts([a, b])
    b2 = Cohort(b.stays.assign(stay_id=lambda d: "b" + d["stay_id"]),
                static=b.static.assign(stay_id=lambda d: "b" + d["stay_id"], only_in_b=1.0),
                labels=b.labels.assign(stay_id=lambda d: "b" + d["stay_id"]), meta=b.meta)
    assert b2.meta.feature_types["only_in_b"] == "numeric" and "only_in_b" not in a.meta.feature_types
    before = dict(a.meta.feature_types)
    both = concat_cohorts([a, b2])
    assert len(both) == 60 and both.label("death").notna().sum() == 58
    assert both.meta.feature_types["only_in_b"] == "numeric"
    assert a.meta.feature_types == before  # pooling leaves the first cohort's meta as it was


@pytest.mark.realdata
def test_uci_heart_disease_sites_as_domains(shared_dataset):
    from healthfusion.data.sources import get_source

    cohort = get_source("heart_disease")(shared_dataset("uci_heart_disease"))
    split = split_domains(cohort, "site", target=["Switzerland"])
    assert len(split.target_ids) == (cohort.stays["site"] == "Switzerland").sum()
    assert set(split.source_values) == set(cohort.stays["site"]) - {"Switzerland"}
    part = target_partition(cohort, split.target_ids, "disease", test_fraction=0.3, seed=0)
    assert len(part.test_ids) > 0 and not set(part.test_ids) & set(part.pool_ids)
