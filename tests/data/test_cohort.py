import json

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.accounting import AccountingError, RowAccounting
from healthfusion.data.cohort import Cohort, CohortWriter
from healthfusion.data.errors import CohortError
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.data.splits import split_patients


def test_round_trip_is_exact(tiny_cohort, tmp_path):
    tiny_cohort.save(tmp_path / "c")
    loaded = Cohort.load(tmp_path / "c")
    for name in ("stays", "static", "events", "codes", "notes", "labels"):
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(tiny_cohort, name), check_dtype=False)
    images = loaded.images
    np.testing.assert_array_equal(loaded.image_array(images), tiny_cohort.image_array(tiny_cohort.images))
    assert loaded.meta.to_dict() == tiny_cohort.meta.to_dict()


def test_load_is_lazy_and_reads_subsets(tiny_cohort, tmp_path):
    tiny_cohort.save(tmp_path / "c")
    loaded = Cohort.load(tmp_path / "c")
    assert loaded._tables["events"] is None
    part = loaded.read_table("events", ["s1", "s2"])
    assert set(part["stay_id"]) == {"s1", "s2"}
    assert loaded._tables["events"] is None


def test_observable_hides_planted_future_events(tiny_cohort):
    events = tiny_cohort.events
    assert (events["time"] > 24).any(), "fixture must plant events after the prediction time"
    seen = tiny_cohort.observable("events")
    assert (seen["time"] <= 24).all()
    assert len(seen) == int((events["time"] <= 24).sum())


@pytest.mark.parametrize("stay_ids, start", [(None, None), (["s1", "s2", "nope"], None), (None, 2.0), (["s3"], 0.0)])
def test_observable_of_a_lazy_folder_equals_the_in_memory_one(tiny_cohort, tmp_path, stay_ids, start):
    """The folder path filters (stays, window start, per-stay prediction time) while reading row groups."""
    tiny_cohort.save(tmp_path / "c")
    loaded = Cohort.load(tmp_path / "c")
    for table in ("events", "codes", "notes"):
        want = tiny_cohort.observable(table, stay_ids, start=start)
        got = loaded.observable(table, stay_ids, start=start)
        assert loaded._tables[table] is None
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("stay_ids, time_range", [(["s1", "nope"], None), (None, (0.0, 5.0)), (["s2"], (None, 3.0))])
def test_read_table_of_a_lazy_folder_equals_the_in_memory_one(tiny_cohort, tmp_path, stay_ids, time_range):
    """Stays and an inclusive time window give the same rows whether filtered in memory or while reading."""
    tiny_cohort.save(tmp_path / "c")
    loaded = Cohort.load(tmp_path / "c")
    want = tiny_cohort.read_table("events", stay_ids, time_range=time_range)
    got = loaded.read_table("events", stay_ids, time_range=time_range)
    assert loaded._tables["events"] is None and 0 < len(want) < len(tiny_cohort.events)
    lo, hi = time_range or (None, None)
    assert ((want["time"] >= (lo if lo is not None else -np.inf)) & (want["time"] <= (hi if hi is not None else np.inf))).all()
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: (p / "cohort.json").unlink(), "cohort.json is missing"),
        (lambda p: (p / "events.parquet").write_bytes(b"garbage"), "not readable Parquet"),
        (lambda p: (p / "cohort.json").write_text(
            json.dumps({**json.loads((p / "cohort.json").read_text()), "schema_version": 99})), "schema version 99"),
        (lambda p: (p / "static.parquet").unlink(), "static.parquet is missing"),
    ],
)
def test_load_errors_name_the_problem(tiny_cohort, tmp_path, edit, message):
    root = tiny_cohort.save(tmp_path / "c")
    edit(root)
    with pytest.raises(CohortError, match=message):
        Cohort.load(root)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CohortError, match="does not exist"):
        Cohort.load(tmp_path / "nope")


def test_validation_rejects_bad_tables(tiny_cohort):
    stays = tiny_cohort.stays
    with pytest.raises(CohortError, match="lacks required column"):
        Cohort(stays.drop(columns=["patient_id"]))
    with pytest.raises(CohortError, match="refer to stays not in the stays table"):
        Cohort(stays, events=pd.DataFrame({"stay_id": ["zz"], "time": [1.0], "variable": ["HR"], "value": [1.0]}))
    with pytest.raises(CohortError, match="appears more than once"):
        Cohort(pd.concat([stays, stays.head(1)]))
    with pytest.raises(CohortError, match="has no time"):
        Cohort(stays, events=pd.DataFrame({"stay_id": ["s0"], "time": [None], "variable": ["HR"], "value": [1.0]}))
    bad_labels = tiny_cohort.labels.assign(death=[2] + [0] * (len(stays) - 1))
    with pytest.raises(CohortError, match="expected 0 or 1"):
        Cohort(stays, labels=bad_labels, meta=CohortMeta(labels=[LabelSpec("death", "binary")]))
    bad_class = tiny_cohort.labels.assign(phenotype="unknown")
    with pytest.raises(CohortError, match="expected one of"):
        Cohort(stays, labels=bad_class, meta=CohortMeta(labels=[LabelSpec("phenotype", "multiclass", ("a", "b"))]))


def test_subset_keeps_images_addressable(tiny_cohort):
    sub = tiny_cohort.subset(["s3", "s5"])
    assert len(sub) == 2
    arrays = sub.image_array(sub.images)
    full = tiny_cohort.image_array(tiny_cohort.images[tiny_cohort.images["stay_id"].isin(["s3", "s5"])])
    np.testing.assert_array_equal(arrays, full)


def test_writer_streams_chunks(tiny_cohort, tmp_path):
    with CohortWriter(tmp_path / "w", tiny_cohort.meta) as w:
        for ids in (["s0", "s1"], ["s2", "s3"]):
            images = tiny_cohort.images[tiny_cohort.images["stay_id"].isin(ids)]
            w.append(stays=tiny_cohort.stays[tiny_cohort.stays["stay_id"].isin(ids)],
                     events=tiny_cohort.events[tiny_cohort.events["stay_id"].isin(ids)],
                     images=images.drop(columns=["part", "offset"]),
                     image_arrays=tiny_cohort.image_array(images))
    c = Cohort.load(tmp_path / "w")
    assert len(c) == 4 and len(c.images) == 3
    assert c.image_array(c.images).shape == (3, 1, 16, 16)


def test_split_is_patient_level_and_seeded(tiny_cohort):
    stays = tiny_cohort.stays
    a = split_patients(stays, seed=3, fractions={"train": 0.5, "test": 0.5})
    b = split_patients(stays, seed=3, fractions={"train": 0.5, "test": 0.5})
    pd.testing.assert_series_equal(a, b)
    per_patient = pd.DataFrame({"p": stays["patient_id"].to_numpy(), "s": a.to_numpy()}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()
    with pytest.raises(CohortError, match="sum to 1"):
        split_patients(stays, fractions={"train": 0.5, "test": 0.6})


def test_accounting_must_sum():
    acc = RowAccounting()
    acc.read("t", 10)
    acc.use("t", 7)
    acc.drop("t", "implausible value", 3)
    acc.check()
    assert acc.to_frame()["rows"].tolist() == [10, 7, 3]
    acc.drop("t", "duplicate", 1)
    with pytest.raises(AccountingError, match="does not sum"):
        acc.check()


def test_an_unknown_label_is_a_value_error_with_a_plain_message(tiny_cohort):
    from healthfusion.data.errors import UnknownLabelError

    with pytest.raises(ValueError, match="has no label 'nope'; it has: ") as info:
        tiny_cohort.meta.label("nope")
    assert isinstance(info.value, (UnknownLabelError, KeyError)) and not str(info.value).startswith("'")
