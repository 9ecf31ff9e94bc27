"""PhysioNet 2012 reader: hand-made record files (folder and archive), malformed inputs, and set A when present."""

import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source
from healthfusion.data.sources.physionet2012 import TIME_SERIES, build

HEADER = "Time,Parameter,Value"
DESCRIPTORS = ["00:00,RecordID,{rid}", "00:00,Age,{age}", "00:00,Gender,1", "00:00,Height,-1", "00:00,ICUType,{icu}",
               "00:00,Weight,80"]


def record(rid: int, rows: list[str], age: int = 70, icu: int = 3) -> str:
    lines = [HEADER] + [d.format(rid=rid, age=age, icu=icu) for d in DESCRIPTORS] + rows
    return "\n".join(lines) + "\n"


RECORDS = {
    1001: record(1001, [
        "00:07,HR,73",  # used
        "00:07,HR,73",  # duplicate row
        "00:07,Urine,400",  # used
        "00:07,Urine,0",  # same minute, other value: used
        "01:30,Temp,-17.8",  # implausible
        "02:00,Weight,-1",  # missing (-1)
        "02:00,MechVent,1",  # used
        "03:00,Foo,5",  # unknown parameter
        "",  # blank line
        "49:00,HR,90",  # after the prediction time: kept, not observable
    ]),
    1002: record(1002, ["00:00,HR,80", "12:15,pH,7.31", "47:59,GCS,15"], age=35, icu=2),
    1003: record(1003, [], age=-1, icu=1),  # descriptors only
}
OUTCOMES = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n1001,12,3,5,-1,0\n1002,-1,8,9,4,1\n1003,7,1,2,-1,0\n"


def write_set(root: Path, records=None, outcomes: str | None = OUTCOMES, name: str = "set-a") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for rid, text in (records or RECORDS).items():
        (folder / f"{rid}.txt").write_text(text)
    if outcomes is not None:
        (root / f"Outcomes-{name.split('-')[1]}.txt").write_text(outcomes)
    return folder


def write_archive(folder: Path) -> Path:
    path = folder.parent / f"{folder.name}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return path


@pytest.fixture
def set_a(tmp_path) -> Path:
    return write_set(tmp_path)


def test_builds_tables_labels_and_domains(set_a):
    cohort = build(set_a)
    assert list(cohort.stay_ids) == ["1001", "1002", "1003"]
    stays = cohort.stays.set_index("stay_id")
    assert stays.loc["1002", "care_unit"] == "CSRU" and stays.loc["1003", "care_unit"] == "CCU"
    assert stays.loc["1001", "age_group"] == "60-79" and stays.loc["1002", "age_group"] == "<40"
    assert stays.loc["1003", "age_group"] == "Unknown"
    assert (stays["sex"] == "M").all() and (stays["prediction_time"] == 48.0).all()
    static = cohort.static.set_index("stay_id")
    assert static.loc["1001", "Weight"] == 80.0 and np.isnan(static.loc["1001", "Height"])
    assert static.loc["1001", "ICUType"] == "MICU" and static.loc["1001", "Gender"] == "M"
    assert cohort.meta.feature_types["ICUType"] == "categorical" and cohort.meta.feature_types["Age"] == "numeric"
    events = cohort.events
    assert set(events["variable"]) == {"HR", "Urine", "MechVent", "pH", "GCS"}
    assert len(events[(events["stay_id"] == "1001") & (events["variable"] == "Urine")]) == 2
    assert events.loc[events["variable"] == "pH", "time"].item() == pytest.approx(12.25)
    labels = cohort.labels.set_index("stay_id")
    assert labels["in_hospital_death"].tolist() == [0, 1, 0]
    assert np.isnan(labels.loc["1002", "saps_i"]) and labels.loc["1002", "sofa"] == 8
    assert np.isnan(labels.loc["1001", "survival_days"]) and labels.loc["1002", "survival_days"] == 4
    assert {s.name for s in cohort.meta.labels} == {"in_hospital_death", "length_of_stay", "survival_days",
                                                     "saps_i", "sofa"}
    assert "saps_i" not in cohort.static.columns  # a reference score, never a feature


def test_every_line_is_accounted_for(set_a):
    acc = build(set_a).accounting
    acc.check()
    t = acc.tables["set-a/*.txt"]
    n_lines = sum(len(text.strip("\n").split("\n")) - 1 for text in RECORDS.values())
    assert t.read == n_lines
    # missing: Height -1 in all three records, Age -1 in 1003, Weight -1 at 02:00 in 1001
    assert t.dropped == {"duplicate row": 1, "implausible value": 1, "missing value": 5, "unknown parameter": 1,
                         "blank line": 1}
    assert acc.tables["Outcomes-a.txt"].used == 3


def test_future_events_are_kept_but_not_observable(set_a):
    cohort = build(set_a)
    assert (cohort.events["time"] > 48).sum() == 1
    assert (cohort.observable("events")["time"] <= 48).all()
    assert len(cohort.observable("events")) == len(cohort.events) - 1


def test_archive_reads_like_the_folder_and_registry_finds_it(set_a):
    from_folder = build(set_a)
    from_archive = get_source("physionet2012")(write_archive(set_a), task="in_hospital_death")
    for name in ("stays", "static", "events", "labels"):
        a, b = getattr(from_folder, name), getattr(from_archive, name)
        assert a.equals(b), name
    assert from_archive.accounting.to_dict() == from_folder.accounting.to_dict()


def test_outcomes_optional_explicit_and_hours(tmp_path):
    folder = write_set(tmp_path, outcomes=None)
    cohort = build(folder, hours=24)
    assert cohort.labels is None and cohort.meta.labels == []
    assert (cohort.stays["prediction_time"] == 24.0).all()
    other = tmp_path / "elsewhere.txt"
    other.write_text(OUTCOMES)
    assert build(folder, outcomes=other).label("in_hospital_death").sum() == 1
    write_set(tmp_path / "b", name="set-b")
    assert build(tmp_path / "b" / "set-b", outcomes=False).labels is None
    with pytest.raises(SourceError, match="no outcomes file was read"):
        build(folder, task="in_hospital_death")


def test_save_and_load_round_trip(set_a, tmp_path):
    cohort = build(set_a)
    loaded = Cohort.load(cohort.save(tmp_path / "cohort"))
    assert loaded.events.equals(cohort.events)
    assert loaded.accounting.to_dict() == cohort.accounting.to_dict()


# ---------------------------------------------------------------------------------------------- malformed input
@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"1001\.txt is empty"),
        (HEADER + "\n", r"1001\.txt has a header but no rows"),
        ("Time;Parameter;Value\n00:00,Age,50\n", r"1001\.txt, line 1: expected the header"),
        (record(1001, ["00:07,HR,73", "7:5,HR,80"]), r"1001\.txt, line 9: cannot parse time '7:5'"),
        (record(1001, ["00:07,HR,73", "00:75,HR,80"]), r"1001\.txt, line 9: cannot parse time '00:75'"),
        (record(1001, [",HR,80"]), r"1001\.txt, line 8: cannot parse an empty time"),
        (record(1001, ["00:07,HR,fast"]), r"1001\.txt, line 8: value 'fast' of HR is not a number"),
        (record(1001, ["00:07,HR,73,extra"]), r"1001\.txt, line 8: expected 3 comma-separated fields"),
        (record(1001, []).replace("RecordID,1001", "RecordID,999"), r"1001\.txt, line 2: RecordID 999 differs"),
        (record(1001, [], icu=7), r"1001\.txt, line 6: ICUType 7 is not one of \[1, 2, 3, 4\]"),
    ],
)
def test_malformed_record_file_names_file_and_line(tmp_path, text, message):
    folder = write_set(tmp_path, records={**RECORDS, 1001: text})
    with pytest.raises(SourceError, match=message):
        build(folder)


def test_malformed_record_in_archive_names_member(tmp_path):
    folder = write_set(tmp_path, records={**RECORDS, 1002: record(1002, ["ab:cd,HR,1"])})
    with pytest.raises(SourceError, match=r"set-a\.tar\.gz:set-a/1002\.txt, line 8"):
        build(write_archive(folder))


@pytest.mark.parametrize(
    "outcomes, message",
    [
        (OUTCOMES.replace("1002,-1,8,9,4,1", "1002,-1,8,9,4,2"), r"Outcomes-a\.txt, line 3: In-hospital_death is '2'"),
        (OUTCOMES.replace("1002,-1,8,9,4,1", "1002,-1,8,9,4,"), r"Outcomes-a\.txt, line 3: In-hospital_death is ''"),
        (OUTCOMES.replace("1003,7,", "1003,x,"), r"Outcomes-a\.txt, line 4: SAPS-I is 'x'"),
        (OUTCOMES.replace(",SOFA", ",Sofa"), r"lacks column\(s\) \['SOFA'\]"),
        (OUTCOMES + "1003,7,1,2,-1,0\n", r"line 5: RecordID 1003 appears more than once"),
        ("", r"Outcomes-a\.txt is empty"),
    ],
)
def test_malformed_outcomes_name_file_and_line(tmp_path, outcomes, message):
    folder = write_set(tmp_path, outcomes=outcomes)
    with pytest.raises(SourceError, match=message):
        build(folder)


def test_outcomes_without_record_are_counted(tmp_path):
    folder = write_set(tmp_path, outcomes=OUTCOMES + "9999,1,1,1,-1,0\n")
    acc = build(folder).accounting
    assert acc.tables["Outcomes-a.txt"].dropped == {"no record file": 1}


def test_missing_inputs_and_bad_options(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        build(tmp_path / "set-z")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no PhysioNet 2012 record files"):
        build(tmp_path / "empty")
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(SourceError, match="not a readable tar archive"):
        build(tmp_path / "bad.tar.gz")
    folder = write_set(tmp_path / "x")
    with pytest.raises(SourceError, match="Outcomes file .* does not exist"):
        build(folder, outcomes=tmp_path / "nope.txt")
    with pytest.raises(SourceError, match="hours must be a positive"):
        build(folder, hours=0)
    with pytest.raises(SourceError, match="Task 'mortality' is not a label"):
        build(folder, task="mortality")


# ---------------------------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def set_a_real(shared_dataset):
    folder = shared_dataset("physionet2012")
    start = time.perf_counter()
    cohort = build(folder / "set-a.tar.gz")
    return cohort, time.perf_counter() - start


@pytest.mark.realdata
def test_set_a_counts_labels_and_domains(set_a_real):
    cohort, seconds = set_a_real
    assert len(cohort) == 4000
    cohort.accounting.check()
    assert cohort.label("in_hospital_death").sum() == 554
    assert cohort.label("in_hospital_death").mean() == pytest.approx(0.1385)
    assert cohort.stays["care_unit"].value_counts().to_dict() == {"MICU": 1481, "SICU": 1068, "CSRU": 874, "CCU": 577}
    assert set(cohort.stays["age_group"]) <= {"<40", "40-59", "60-79", "80+"}
    assert set(cohort.stays["sex"]) == {"F", "M", "Unknown"}
    assert (cohort.events.groupby("stay_id").size().reindex(cohort.stay_ids).isna()).sum() == 3
    assert cohort.events["time"].max() <= 48.0
    assert set(cohort.events["variable"]) <= set(TIME_SERIES)
    assert cohort.label("saps_i").notna().sum() == 4000 - 190
    t = cohort.accounting.tables["set-a/*.txt"]
    assert t.read == 1_757_980 and t.used + sum(t.dropped.values()) == t.read
    assert seconds < 30, f"set-a took {seconds:.1f} s to build"


# ---------------------------------------------------------------------------------------------- trustworthy inputs
def test_descriptors_after_the_prediction_time_are_not_static_features(tmp_path):
    """Planted: Height, Weight, ICUType and Gender first recorded at 50 h (after the 48 h prediction time)."""
    late = ["50:00,Height,180", "50:00,ICUType,4", "51:00,Gender,0", "52:00,Age,99"]
    clean = {**RECORDS, 1003: record(1003, [], age=-1, icu=-1)}
    planted = {**clean, 1003: record(1003, late, age=-1, icu=-1)}
    before = build(write_set(tmp_path / "clean", clean))
    after = build(write_set(tmp_path / "planted", planted))
    assert after.static.equals(before.static)
    assert after.stays.equals(before.stays)  # care unit, age group and sex come from the descriptors
    t = after.accounting.tables["set-a/*.txt"]
    assert t.dropped["descriptor after prediction time"] == 4
    after.accounting.check()
    # a descriptor recorded before the prediction time is used; with a later prediction time, so is the late one
    first = "\n".join([HEADER, "00:00,RecordID,1004", "10:00,Height,170", "50:00,ICUType,4", "50:00,HR,80"]) + "\n"
    folder = write_set(tmp_path / "own", {1004: first}, outcomes=None)
    static = build(folder).static.set_index("stay_id")
    assert static.loc["1004", "Height"] == 170.0 and pd.isna(static.loc["1004", "ICUType"])
    assert build(folder, hours=60).static.set_index("stay_id").loc["1004", "ICUType"] == "SICU"


def test_empty_and_unknown_parameters_are_named_with_integer_counts(tmp_path, caplog):
    records = {**RECORDS, 1002: record(1002, ["00:00,HR,80", "01:00,,5", "02:00,,6", "03:00,Foo,1"])}
    with caplog.at_level("WARNING"):
        cohort = build(write_set(tmp_path, records))
    text = caplog.text
    assert "2 row(s) with an empty Parameter field (first at record file" in text and "1002.txt, line 9" in text
    assert "{'Foo': 2}" in text and "np.int64" not in text and "'HR'" not in text
    t = cohort.accounting.tables["set-a/*.txt"]
    assert t.dropped["empty parameter"] == 2 and t.dropped["unknown parameter"] == 2
    cohort.accounting.check()


def test_a_set_without_outcomes_says_so(tmp_path, caplog):
    folder = write_set(tmp_path, outcomes=None)
    with caplog.at_level("WARNING"):
        assert build(folder).labels is None
    assert "no outcomes file beside it" in caplog.text and "Outcomes-a.txt" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        build(folder, outcomes=False)  # asked for no labels: nothing to say
    assert "no outcomes file" not in caplog.text


@pytest.mark.parametrize("name", ["../../1004.txt", "/tmp/1004.txt", "set-a/../../1004.txt"])
def test_an_archive_member_climbing_out_is_rejected_by_name(set_a, name):
    path = write_archive(set_a)
    extra = set_a.parent / "extra.txt"
    extra.write_text(record(1004, []))
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    import io as _io

    with tarfile.open(path, "w:gz") as tar:
        for member, data in members:
            tar.addfile(member, _io.BytesIO(data) if data is not None else None)
        info = tarfile.TarInfo(name)
        info.size = extra.stat().st_size
        tar.addfile(info, _io.BytesIO(extra.read_bytes()))
    with pytest.raises(SourceError, match=rf"member '{name}' climbs out of the archive"):
        build(path)
