"""The embedded synthetic cohort: determinism, schema, realism, planted traps and flat memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from healthfusion.data import synthetic
from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.plausibility import PLAUSIBLE_RANGES, drop_implausible, plausible_mask
from healthfusion.data.schema import DOMAIN_COLUMNS, TABLES
from healthfusion.data.sources import get_source

N = 2000


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return synthetic.generate(N, seed=0)


def _tables(c: Cohort) -> dict[str, pd.DataFrame]:
    return {name: getattr(c, name) for name in TABLES}


def _same(a: Cohort, b: Cohort) -> None:
    for name, df in _tables(a).items():
        other = getattr(b, name)
        cols = [col for col in df.columns if col not in ("part", "offset")]  # array layout may differ
        pd.testing.assert_frame_equal(df[cols], other[cols], check_dtype=False, obj=name)
    np.testing.assert_array_equal(a.image_array(a.images), b.image_array(b.images))


# ------------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_cohort_whatever_the_chunk_size():
    _same(synthetic.generate(600, seed=5, chunk_size=256), synthetic.generate(600, seed=5, chunk_size=5000))


def test_different_seed_different_cohort():
    a, b = synthetic.generate(300, seed=1), synthetic.generate(300, seed=2)
    assert not a.labels["los_days"].equals(b.labels["los_days"])
    assert len(a.events) != len(b.events) or not a.events["value"].equals(b.events["value"])


def test_smaller_cohort_is_a_prefix_of_a_larger_one():
    small, large = synthetic.generate(300, seed=4), synthetic.generate(700, seed=4)
    _same(small, large.subset(small.stay_ids))


def test_write_streams_the_same_cohort_and_it_loads_valid(tmp_path):
    calls = []
    path = synthetic.write(tmp_path / "c", 600, seed=5, chunk_size=512, progress=lambda d, t: calls.append((d, t)))
    loaded = Cohort.load(path)
    _same(loaded, synthetic.generate(600, seed=5))
    loaded.validate()  # every table is read now, so every check runs
    assert calls == [(512, 600), (600, 600)]
    assert len(list((path / "images").glob("part-*.npy"))) == 2
    loaded.accounting.check()
    meta = json.loads((path / "cohort.json").read_text())
    for name, n in meta["tables"].items():
        assert loaded.accounting.tables[name].read == loaded.accounting.tables[name].used == n


def test_registry_builds_and_opens_the_cohort(tmp_path):
    c = get_source("synthetic")(tmp_path / "c", n_stays=100, seed=3, image_size=16)
    assert isinstance(c, Cohort) and len(c) == 100 and c.meta.source == "synthetic"
    assert c.image_array(c.images.head(2)).shape == (2, 1, 16, 16)
    with pytest.raises(SourceError, match="not a label"):
        synthetic.build(tmp_path / "d", task="mortalty", n_stays=10)
    with pytest.raises(SourceError, match="Unknown option"):
        synthetic.build(tmp_path / "d", n_stays=10, image_sise=16)


@pytest.mark.parametrize("kwargs", [{"n_stays": 0}, {"seed": -1}, {"image_size": 4}, {"hours": 2},
                                    {"chunk_size": 0}, {"n_stays": 2.5}])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError, match="synthetic:"):
        synthetic.generate(**{"n_stays": 10, **kwargs})


# ------------------------------------------------------------------------------------------------ schema
def test_schema_domains_and_patients(cohort):
    stays = cohort.stays
    assert set(DOMAIN_COLUMNS) - {"source"} <= set(stays.columns)  # ``source``: only pooled cohorts have it
    assert set(stays["site"]) == set(synthetic.SITES)
    assert set(stays["care_unit"]) == set(synthetic.CARE_UNITS)
    assert set(stays["age_group"]) == set(synthetic.AGE_GROUPS)
    assert (stays["prediction_time"] == 48.0).all()
    assert not set(stays["patient_id"]) & set(stays["stay_id"])
    per_patient = stays.groupby("patient_id").size()
    assert 0.03 < (per_patient >= 2).mean() < 0.3  # readmissions
    assert cohort.static["prior_icu_stays"].max() >= 1
    assert cohort.meta.feature_types == synthetic.FEATURE_TYPES
    assert cohort.static["weight"].isna().any() and cohort.static["height"].isna().any()


def test_labels_and_prevalence(cohort):
    labels = cohort.labels
    assert [s.name for s in cohort.meta.labels] == ["mortality", "los_days", "los_gt_3d", "phenotype", "diagnoses",
                                                    "readmission_30d"]
    assert 0.08 <= labels["mortality"].mean() <= 0.17
    assert (labels["los_days"] > 2).all()
    assert 0.3 < labels["los_gt_3d"].mean() < 0.85
    assert set(labels["phenotype"]) == set(synthetic.PHENOTYPES)
    flat = {d for row in labels["diagnoses"] for d in row}
    assert flat == set(synthetic.DIAGNOSES)
    readmit = labels["readmission_30d"]
    assert (readmit.isna() == (labels["mortality"] == 1)).all()  # undefined exactly for deaths
    assert 0.02 < readmit.mean() < 0.2


def test_ground_truth_logit_drives_mortality(cohort):
    truth = synthetic.ground_truth(N, seed=0).reindex(cohort.stay_ids)
    y = cohort.label("mortality").to_numpy()
    assert roc_auc_score(y, truth["logit"]) > 0.8
    assert abs((1 / (1 + np.exp(-truth["logit"]))).mean() - y.mean()) < 0.03


# ------------------------------------------------------------------------------------------------ traps
def test_a_few_implausible_values_that_plausibility_removes(cohort):
    events = cohort.events
    assert set(events["variable"]) <= set(PLAUSIBLE_RANGES)
    bad = ~plausible_mask(events)
    assert 0.001 < bad.mean() < 0.004
    assert ((events["variable"] == "Temp") & (events["value"] > 100)).any()  # 370 for 37.0
    assert ((events["variable"] == "HR") & (events["value"] == 0)).any()
    acc = RowAccounting()
    acc.read("events", len(events))
    kept = drop_implausible(events, acc, "events")
    acc.use("events", len(kept))
    acc.check()
    assert acc.tables["events"].dropped == {"implausible value": int(bad.sum())}


def test_rows_after_prediction_time_exist_and_observable_removes_them(cohort):
    cutoff = 48.0
    for table in ("events", "codes", "notes"):
        late = getattr(cohort, table)["time"] > cutoff
        assert late.any(), table
        assert (cohort.observable(table)["time"] <= cutoff).all()
    events = cohort.events
    late = events[events["time"] > cutoff]
    assert late["time"].max() <= cutoff + synthetic.POST_WINDOW_HOURS
    assert late["stay_id"].nunique() < 0.25 * N and len(late) < 0.06 * len(events)  # a few
    assert (cohort.codes.loc[cohort.codes["time"] > cutoff, "code"] == "R99").all()
    assert (cohort.images["time"] <= cutoff).all()


# ------------------------------------------------------------------------------------------------ modalities
def test_images_have_the_declared_shape_and_show_the_lesion(cohort):
    images = cohort.images
    arrays = cohort.image_array(images)
    assert arrays.shape == (len(images), 1, 28, 28) and arrays.dtype == np.uint8
    assert 0.55 < images["stay_id"].nunique() / N < 0.9
    lesion = synthetic.ground_truth(N, seed=0)["lesion"].reindex(images["stay_id"]).to_numpy()
    lung_cores = arrays[:, 0, 9:19][:, :, np.r_[6:11, 17:22]].reshape(len(arrays), -1)
    brightest = lung_cores.max(axis=1).astype(float)
    assert roc_auc_score(lesion > 0, brightest) > 0.9  # a blob in a lung field
    assert np.corrcoef(lesion[lesion > 0], brightest[lesion > 0])[0, 1] > 0.3  # bigger lesion, brighter blob


def test_notes_and_codes(cohort):
    per_stay = cohort.observable("notes").groupby("stay_id").size()
    assert per_stay.max() == 3 and 0.05 < 1 - len(per_stay) / N < 0.3  # 1-3 notes, some stays none
    truth = synthetic.ground_truth(N, seed=0)
    notes = cohort.observable("notes")
    says = notes["text"].str.contains("goals of care|Comfort care|DNR|Palliative")
    goals = truth.loc[notes["stay_id"], "goals_of_care"].to_numpy()
    assert says[goals].mean() > 0.6 > 0.1 > says[~goals].mean()
    codes = cohort.codes
    assert set(codes["system"]) == {"icd10"}
    assert (codes.loc[codes["code"] != "R99", "time"] == 0).all()
    static = cohort.static.set_index("stay_id")["comorbidity_count"]
    chronic = codes[codes["code"].isin([c[0] for c in synthetic.COMORBIDITIES])].groupby("stay_id").size()
    assert (chronic.reindex(static.index, fill_value=0) == static).all()


def test_domain_shift_between_sites(cohort):
    site = cohort.stays.set_index("stay_id")["site"]
    events = cohort.observable("events")
    hr_per_stay = (events["variable"] == "HR").groupby(events["stay_id"].map(site)).sum() / site.value_counts()
    assert hr_per_stay["C"] < 0.6 * hr_per_stay["D"]  # site C charts every 2 h, site D every 45 min
    lactate = events[events["variable"] == "Lactate"].groupby("stay_id").size()
    lactate_rate = lactate.reindex(site.index, fill_value=0).groupby(site).mean()
    assert lactate_rate["C"] < 0.6 * lactate_rate["A"]
    mortality = cohort.label("mortality").groupby(site.to_numpy()).mean()
    assert mortality.max() - mortality.min() > 0.04
    age = cohort.static.set_index("stay_id")["age"].groupby(site).mean()
    assert age["D"] - age["C"] > 6


# ------------------------------------------------------------------------------------------------ memory
def test_memory_stays_flat_as_the_cohort_grows(tmp_path):
    """Peak RSS after writing 8x more stays (same chunk size) grows far less than the extra data would take."""
    script = textwrap.dedent(f"""
        import resource
        from healthfusion.data import synthetic
        def peak():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        synthetic.write({str(tmp_path / "a")!r}, 1024, chunk_size=512)
        small = peak()
        synthetic.write({str(tmp_path / "b")!r}, 8192, chunk_size=512)
        print(small, peak())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    small, large = map(float, out.stdout.split())
    events = json.loads((tmp_path / "b" / "cohort.json").read_text())["tables"]["events"]
    held_in_memory_mb = events * 30 / 2**20  # at least stay, time, variable, value per event row
    assert held_in_memory_mb > 60
    assert large - small < 35, (small, large)


def test_positive_class_flips_mortality_and_says_so():
    from healthfusion.data.synthetic import generate

    died, survived = generate(60, seed=2), generate(60, seed=2, positive_class=0)
    assert (survived.label("mortality") == 1 - died.label("mortality")).all()
    assert survived.events.equals(died.events)  # the same stays; only the label's meaning changes
    assert "1 = survived" in survived.meta.label("mortality").description
    with pytest.raises(ValueError, match="positive_class"):
        generate(10, positive_class=2)
