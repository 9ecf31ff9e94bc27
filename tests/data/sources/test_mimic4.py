"""MIMIC-IV reader: a small MIMIC-format extract written here, and the MIMIC-IV demo when ../shared/data exists."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source, io
from healthfusion.data.sources.convert import convert_to_parquet
from healthfusion.data.sources.itemmap import MIMIC4_ITEMS
from healthfusion.data.sources.mimic4 import build

# ---------------------------------------------------------------------------------------------- a tiny extract
# subject 1: admission 100 (alive, readmitted after 15 days) with ICU stay 1001 (72 h) and admission 101 (died)
# with stay 1002 (48 h); subject 2: admission 200 with a 10 h stay 2001; subject 3: admission 300, no ICU stay.
CHART = [  # stay_id, charttime, itemid, valuenum ; the comment says what should happen
    (1001, "2150-01-01 07:00:00", 220045, 80.0),  # HR at 1 h: used
    (1001, "2150-01-01 07:00:00", 223761, 98.6),  # Temp F -> 37.0 C: used
    (1001, "2150-01-01 08:00:00", 220045, 500.0),  # implausible
    (1001, "2150-01-01 08:00:00", 226228, 1.0),  # unmapped item (Gender)
    (1001, "2150-01-01 09:00:00", 220739, 4.0),  # GCS eye: used
    (1001, "2150-01-01 09:00:00", 223900, 5.0),  # GCS verbal: used
    (1001, "2150-01-01 09:00:00", 223901, 6.0),  # GCS motor: used -> GCS 15 derived at 3 h
    (1001, "2150-01-02 12:00:00", 220045, 90.0),  # 30 h, after the prediction time: kept, not observable
    (1001, "2149-12-30 00:00:00", 220045, 70.0),  # 54 h before intime: outside stay window
    (1001, "2150-01-01 10:00:00", 220045, None),  # missing value
    (2001, "2150-03-01 11:00:00", 220045, 100.0),  # stay excluded (10 h < 24 h): stay not in cohort
    (99999, "2150-03-01 11:00:00", 220045, 100.0),  # unknown stay: stay not in cohort
]
LABS = [  # subject_id, charttime, itemid, valuenum
    (1, "2150-01-01 05:00:00", 50912, 1.2),  # creatinine 1 h before intime (lookback): used
    (1, "2150-01-01 12:00:00", 51250, 90.0),  # MCV: unmapped item
    (2, "2150-03-01 12:00:00", 50912, 0.9),  # subject 2 has no stay in the cohort
    (1, "2150-01-15 00:00:00", 50912, 1.0),  # between the two stays: outside stay window
    (1, "2150-01-26 00:00:00", 50971, 4.0),  # K in stay 1002 at 22 h: used
    (1, "2150-01-26 01:00:00", 50971, None),  # missing value
    (1, "2150-01-24 12:00:00", 50971, 4.1),  # 14 h before stay 1002: used (lookback)
]


def _write(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)


def make_mimic(root: Path, chart_suffix: str = ".csv.gz") -> Path:
    hosp, icu = root / "hosp", root / "icu"
    _write(hosp / "patients.csv.gz", pd.DataFrame({
        "subject_id": [1, 2, 3], "gender": ["M", "F", "F"], "anchor_age": [60, 45, 30],
        "anchor_year": [2150, 2150, 2150], "anchor_year_group": "2011 - 2013", "dod": [None, None, None]}))
    _write(hosp / "admissions.csv.gz", pd.DataFrame({
        "subject_id": [1, 1, 2, 3], "hadm_id": [100, 101, 200, 300],
        "admittime": ["2150-01-01 00:00:00", "2150-01-25 00:00:00", "2150-03-01 00:00:00", "2150-05-01 00:00:00"],
        "dischtime": ["2150-01-10 00:00:00", "2150-01-28 00:00:00", "2150-03-05 00:00:00", "2150-05-03 00:00:00"],
        "deathtime": [None, "2150-01-28 00:00:00", None, None],
        "admission_type": ["EW EMER.", "URGENT", "ELECTIVE", "ELECTIVE"],
        "insurance": ["Medicare", "Medicare", "Other", "Other"],
        "race": ["WHITE", "WHITE", "BLACK/AFRICAN AMERICAN", "ASIAN"], "hospital_expire_flag": [0, 1, 0, 0]}))
    _write(icu / "icustays.csv.gz", pd.DataFrame({
        "subject_id": [1, 1, 2], "hadm_id": [100, 101, 200], "stay_id": [1001, 1002, 2001],
        "first_careunit": ["Medical Intensive Care Unit (MICU)", "Coronary Care Unit (CCU)", "Surgical ICU"],
        "last_careunit": ["MICU", "CCU", "SICU"],
        "intime": ["2150-01-01 06:00:00", "2150-01-25 02:00:00", "2150-03-01 10:00:00"],
        "outtime": ["2150-01-04 06:00:00", "2150-01-27 02:00:00", "2150-03-01 20:00:00"],
        "los": [3.0, 2.0, 10 / 24]}))
    _write(hosp / "labevents.csv.gz", pd.DataFrame({
        "labevent_id": range(len(LABS)), "subject_id": [r[0] for r in LABS], "hadm_id": None, "specimen_id": 1,
        "itemid": [r[2] for r in LABS], "charttime": [r[1] for r in LABS],
        "storetime": [r[1].replace(":00:00", ":30:00") for r in LABS],
        "value": [r[3] for r in LABS], "valuenum": [r[3] for r in LABS], "valueuom": "mg/dL"}))
    _write(hosp / "diagnoses_icd.csv.gz", pd.DataFrame({
        "subject_id": [1, 1, 2, 3], "hadm_id": [100, 101, 200, 300], "seq_num": 1,
        "icd_code": ["4019", "I10", "25000", "E119"], "icd_version": [9, 10, 9, 10]}))
    _write(icu / f"chartevents{chart_suffix}", pd.DataFrame({
        "subject_id": 1, "hadm_id": 100, "stay_id": [r[0] for r in CHART], "caregiver_id": 7,
        "charttime": [r[1] for r in CHART], "storetime": [r[1] for r in CHART], "itemid": [r[2] for r in CHART],
        "value": [r[3] for r in CHART], "valuenum": [r[3] for r in CHART], "valueuom": "", "warning": 0}))
    _write(icu / "outputevents.csv", pd.DataFrame({
        "subject_id": 1, "hadm_id": 100, "stay_id": [1001, 1001], "caregiver_id": 7,
        "charttime": ["2150-01-01 08:00:00", "2150-01-01 08:00:00"], "storetime": "2150-01-01 08:00:00",
        "itemid": [226559, 226588], "value": [150.0, 20.0], "valueuom": "ml"}))
    return root


@pytest.fixture
def extract(tmp_path) -> Path:
    return make_mimic(tmp_path / "mimic")


def _events(cohort: Cohort, variable: str) -> pd.DataFrame:
    ev = cohort.events
    return ev[ev["variable"] == variable].sort_values("time").reset_index(drop=True)


def test_chartevents_are_mapped_converted_and_every_row_counted(extract):
    cohort = build(extract)
    acc = cohort.accounting.to_dict()
    assert acc["chartevents"] == {"read": 12, "used": 6, "dropped": {
        "unmapped item": 1, "stay not in cohort": 2, "missing value": 1, "implausible value": 1,
        "outside stay window": 1}}
    temp = _events(cohort, "Temp")
    assert temp["value"].tolist() == pytest.approx([37.0])
    assert temp["time"].tolist() == pytest.approx([1.0])
    assert _events(cohort, "HR")["time"].tolist() == pytest.approx([1.0, 30.0])
    gcs = _events(cohort, "GCS")
    assert gcs["value"].tolist() == [15.0] and gcs["time"].tolist() == pytest.approx([3.0])
    cohort.accounting.check()


def test_events_after_prediction_time_are_kept_but_not_observable(extract):
    cohort = build(extract, prediction_hours=24)
    hr = cohort.observable("events")
    hr = hr[(hr["variable"] == "HR") & (hr["stay_id"] == "1001")]
    assert hr["time"].tolist() == pytest.approx([1.0])
    assert (cohort.events["time"] > 24).any()


def test_labevents_join_by_subject_within_stay_windows(extract):
    cohort = build(extract)
    assert cohort.accounting.to_dict()["labevents"] == {"read": 7, "used": 3, "dropped": {
        "unmapped item": 1, "subject not in cohort": 1, "outside stay window": 1, "missing value": 1}}
    labs = cohort.events[cohort.events["variable"].isin(["Creatinine", "K"])].sort_values(["stay_id", "time"])
    assert labs["stay_id"].tolist() == ["1001", "1002", "1002"]
    assert labs["time"].tolist() == pytest.approx([-1.0, -14.0, 22.0])
    later = build(extract, lab_time="storetime")
    creat = _events(later, "Creatinine")
    assert creat["time"].tolist() == pytest.approx([-0.5])


def test_outputevents_urine(extract):
    cohort = build(extract)
    assert _events(cohort, "Urine")["value"].tolist() == [150.0]
    assert cohort.accounting.to_dict()["outputevents"]["dropped"] == {"unmapped item": 1}


def test_stays_labels_domains_and_min_stay(extract):
    cohort = build(extract, prediction_hours=24)
    assert cohort.stay_ids.tolist() == ["1001", "1002"]
    assert cohort.stays["patient_id"].tolist() == ["1", "1"]
    assert cohort.stays["prediction_time"].tolist() == [24.0, 24.0]
    assert cohort.accounting.to_dict()["icustays"] == {"read": 3, "used": 2,
                                                        "dropped": {"shorter than min_stay_hours": 1}}
    stays = cohort.stays.set_index("stay_id")
    assert stays.loc["1001", "care_unit"] == "Medical Intensive Care Unit (MICU)"
    assert stays.loc["1001", ["sex", "age_group", "ethnicity", "site"]].tolist() == ["M", "60-79", "White", "BIDMC"]
    labels = cohort.labels.set_index("stay_id")
    assert labels.loc["1001", "in_hospital_death"] == 0 and labels.loc["1002", "in_hospital_death"] == 1
    assert labels.loc["1001", "readmission_30d"] == 1 and np.isnan(labels.loc["1002", "readmission_30d"])
    assert labels["icu_length_of_stay"].tolist() == pytest.approx([3.0, 2.0])
    assert cohort.static.set_index("stay_id").loc["1001", "Age"] == 60
    everyone = build(extract, prediction_hours=24, min_stay_hours=0)
    assert len(everyone) == 3
    assert everyone.labels.set_index("stay_id").loc["2001", "readmission_30d"] == 0
    assert len(build(extract, prediction_hours=48)) == 2  # exactly 48 h is long enough
    assert len(build(extract, prediction_hours=49)) == 1


def test_diagnoses_are_dated_at_discharge_unless_asked(extract):
    cohort = build(extract)
    codes = cohort.codes.sort_values("stay_id")
    assert codes[["stay_id", "system", "code"]].values.tolist() == [["1001", "icd9", "4019"], ["1002", "icd10", "I10"]]
    assert codes["time"].tolist() == pytest.approx([8 * 24 + 18, 3 * 24 - 2])
    assert cohort.observable("codes").empty
    assert cohort.accounting.to_dict()["diagnoses_icd"]["dropped"] == {"admission not in cohort": 2}
    early = build(extract, codes_at="admission")
    assert early.observable("codes")["time"].tolist() == pytest.approx([-6.0, -2.0])


def test_streaming_in_small_blocks_gives_the_same_cohort(extract, monkeypatch):
    whole = build(extract)
    monkeypatch.setattr(io, "STREAM_BLOCK_BYTES", 200)
    blocks = build(extract)
    assert blocks.accounting.to_dict() == whole.accounting.to_dict()
    key = ["stay_id", "time", "variable", "value"]
    pd.testing.assert_frame_equal(blocks.events.sort_values(key).reset_index(drop=True),
                                  whole.events.sort_values(key).reset_index(drop=True))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_plain_csv_and_parquet_chartevents(tmp_path, suffix):
    root = make_mimic(tmp_path / "m", chart_suffix=suffix)
    cohort = build(root)
    assert cohort.accounting.to_dict()["chartevents"]["used"] == 6
    assert _events(cohort, "Temp")["value"].tolist() == pytest.approx([37.0])


def test_without_chartevents_the_cohort_has_labs_only(extract):
    (extract / "icu" / "chartevents.csv.gz").unlink()
    cohort = build(extract)
    assert "chartevents" not in cohort.accounting.to_dict()
    assert not cohort.events["variable"].isin(["HR", "Temp"]).any()


def test_cohort_round_trips_and_is_registered(extract, tmp_path):
    assert get_source("mimic4") is build
    cohort = build(extract)
    loaded = Cohort.load(cohort.save(tmp_path / "out"))
    assert len(loaded) == 2 and loaded.meta.label("readmission_30d").kind == "binary"


def test_building_into_a_folder_streams_the_same_cohort_with_spills(extract, tmp_path, monkeypatch):
    """build(out=...) writes the hourly chunks as they are fetched (here two hourly means at a time, cut at
    stay boundaries, with a small memory limit for the engine) and returns the lazily loaded folder: same
    events, accounting and observable rows as in memory."""
    from healthfusion.data.sources import engine, hourly

    whole = build(extract)
    monkeypatch.setattr(io, "STREAM_BLOCK_BYTES", 200)
    monkeypatch.setattr(hourly, "CHUNK_BINS", 2)
    monkeypatch.setattr(engine, "MEMORY_LIMIT", "64MB")
    chunks = []
    real_events = hourly._events
    monkeypatch.setattr(hourly, "_events", lambda means, *a: chunks.append(set(means["stay"])) or real_events(means, *a))
    folder = build(extract, out=tmp_path / "cohort")
    assert (tmp_path / "cohort" / "events.parquet").is_file() and folder._tables.get("events") is None
    # more hourly means than one fetch holds, yet one chunk per stay: a stay is never split
    assert chunks and all(len(c) == 1 for c in chunks) and len(chunks) == len(set().union(*chunks))
    assert (whole.events["variable"].isin(["HR", "Temp", "GCS"])).sum() > hourly.CHUNK_BINS
    assert folder.accounting.to_dict() == whole.accounting.to_dict()
    key = ["stay_id", "time", "variable", "value"]

    def plain(df):
        return df.astype({"stay_id": str, "variable": str})[key].sort_values(key).reset_index(drop=True)

    pd.testing.assert_frame_equal(plain(folder.observable("events", start=-6.0)),
                                  plain(whole.observable("events", start=-6.0)))
    assert folder._tables.get("events") is None  # the window was read with a filter, not the whole table
    pd.testing.assert_frame_equal(plain(folder.events), plain(whole.events))


def _add_chart_rows(extract: Path, rows: list[tuple]) -> None:
    path = extract / "icu" / "chartevents.csv.gz"
    df = pd.read_csv(path)
    extra = pd.DataFrame(rows, columns=["stay_id", "charttime", "itemid", "valuenum"])
    pd.concat([df, extra.assign(value=extra["valuenum"])], ignore_index=True).to_csv(path, index=False)


def test_chartevents_are_hourly_means_dated_at_their_mean_time(extract):
    _add_chart_rows(extract, [
        (1001, "2150-01-01 07:30:00", 220045, 90.0),  # a second HR in hour [1, 2): mean 85 at 1.25 h
        (1001, "2150-01-01 11:00:00", 220739, 3.0),  # GCS components in hour [5, 6), charted apart
        (1001, "2150-01-01 11:20:00", 223900, 4.0),
        (1001, "2150-01-01 11:40:00", 223901, 5.0),
        (1001, "2150-01-01 11:50:00", 223901, 6.0),
    ])
    cohort = build(extract)
    acc = cohort.accounting.to_dict()["chartevents"]
    assert acc["read"] == 17 and acc["used"] == 11  # every raw row is used once or dropped with a reason
    hr = _events(cohort, "HR")
    assert hr["value"].tolist() == [85.0, 90.0] and hr["time"].tolist() == pytest.approx([1.25, 30.0])
    motor = _events(cohort, "GCSMotor")
    assert motor["value"].tolist() == [6.0, 5.5] and motor["time"].tolist() == pytest.approx([3.0, 5 + 3 / 4])
    gcs = _events(cohort, "GCS")  # sum of the hour's component means, dated at the latest component
    assert gcs["value"].tolist() == [15.0, 12.5] and gcs["time"].tolist() == pytest.approx([3.0, 5 + 3 / 4])


def test_hours_are_counted_from_the_prediction_time_so_no_mean_leaks(extract):
    _add_chart_rows(extract, [
        (1001, "2150-01-02 06:12:00", 220045, 100.0),  # 24.2 h: before a 24.5 h prediction time
        (1001, "2150-01-02 06:42:00", 220045, 200.0),  # 24.7 h: after it (planted future value)
    ])
    cohort = build(extract, prediction_hours=24.5)
    seen = cohort.observable("events")
    seen = seen[(seen["stay_id"] == "1001") & (seen["variable"] == "HR")]
    assert seen["value"].tolist() == [80.0, 100.0]  # an hour since admission [24, 25) would have mixed them
    hr = _events(cohort, "HR")
    assert hr.loc[hr["value"] == 200.0, "time"].tolist() == pytest.approx([24.7])


def test_a_parquet_conversion_gives_the_same_cohort(extract):
    csv = build(extract)
    written = convert_to_parquet(extract, extract)  # in place: the readers prefer the .parquet files
    assert extract / "icu" / "chartevents.parquet" in written
    parquet = build(extract)
    assert parquet.accounting.to_dict() == csv.accounting.to_dict()
    for table in ("events", "codes", "labels", "static", "stays"):
        a, b = getattr(csv, table), getattr(parquet, table)
        key = list(a.columns)
        pd.testing.assert_frame_equal(a.sort_values(key).reset_index(drop=True),
                                      b.sort_values(key).reset_index(drop=True), check_dtype=False)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("options, message", [
    ({"prediction_hours": 0}, "prediction_hours must be a positive"),
    ({"min_stay_hours": -1}, "min_stay_hours must be a non-negative"),
    ({"codes_at": "never"}, "codes_at must be one of"),
    ({"lab_time": "resulttime"}, "lab_time must be one of"),
    ({"task": "mortality"}, "Task 'mortality' is not a label"),
])
def test_bad_options(extract, options, message):
    with pytest.raises(SourceError, match=message):
        build(extract, **options)


def test_missing_column_names_file_and_column(extract):
    path = extract / "icu" / "icustays.csv.gz"
    pd.read_csv(path).drop(columns=["outtime"]).to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"icustays\.csv\.gz lacks column\(s\) \['outtime'\]"):
        build(extract)


def test_missing_column_in_streamed_table(extract):
    path = extract / "icu" / "chartevents.csv.gz"
    pd.read_csv(path).drop(columns=["valuenum"]).to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"chartevents\.csv\.gz lacks column\(s\) \['valuenum'\]"):
        build(extract)


def test_unparseable_time_names_file_column_and_line(extract):
    path = extract / "icu" / "chartevents.csv.gz"
    df = pd.read_csv(path)
    df.loc[4, "charttime"] = "yesterday"
    df.to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"chartevents\.csv\.gz, column 'charttime', line 6: cannot parse time "
                                          r"'yesterday'"):
        build(extract)


def test_non_numeric_value_names_line(extract):
    path = extract / "hosp" / "labevents.csv.gz"
    df = pd.read_csv(path)
    df["itemid"] = df["itemid"].astype(object)
    df.loc[2, "itemid"] = "abc"
    df.to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"labevents\.csv\.gz, column 'itemid', line 4: 'abc' is not an integer"):
        build(extract)


def test_empty_file(extract):
    (extract / "icu" / "chartevents.csv.gz").unlink()
    (extract / "icu" / "chartevents.csv").write_text("")
    with pytest.raises(SourceError, match=r"chartevents\.csv is empty"):
        build(extract)


def test_unknown_label_value_is_an_error(extract):
    path = extract / "hosp" / "admissions.csv.gz"
    df = pd.read_csv(path)
    df.loc[1, "hospital_expire_flag"] = 2
    df.to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"'hospital_expire_flag', line 3: value 2 is not 0 or 1"):
        build(extract)


# ---------------------------------------------------------------------------------------------- the real demo
@pytest.fixture(scope="module")
def demo(shared_dataset) -> Path:
    return shared_dataset("mimic_iv_demo")  # from conftest.py: skips without ../shared/data, fails under CI=true


@pytest.fixture(scope="module")
def demo_24h(demo) -> Cohort:
    return build(demo, prediction_hours=24)


@pytest.mark.realdata
def test_item_map_matches_the_demo_dictionaries(demo):
    d_items = pd.read_csv(demo / "icu" / "d_items.csv.gz").set_index("itemid")
    d_lab = pd.read_csv(demo / "hosp" / "d_labitems.csv.gz").set_index("itemid")
    for m in MIMIC4_ITEMS:
        row = d_lab.loc[m.itemid] if m.table == "labevents" else d_items.loc[m.itemid]
        assert row["label"] == m.label, m
        if m.table != "labevents":
            assert row["linksto"] == m.table, m
        else:
            assert row["fluid"] == "Blood", m


@pytest.mark.realdata
def test_demo_cohort_24h(demo_24h):
    cohort = demo_24h
    cohort.accounting.check()
    acc = cohort.accounting.to_dict()
    assert len(cohort) == 117 and acc["icustays"]["read"] == 140
    assert acc["icustays"]["dropped"] == {"shorter than min_stay_hours": 23}
    assert acc["labevents"]["read"] == 107_727 and acc["diagnoses_icd"]["read"] == 4_506
    assert "chartevents" not in acc  # the demo copy lacks it
    assert int(cohort.labels["in_hospital_death"].sum()) == 14
    for col in ("site", "care_unit", "age_group", "sex", "ethnicity"):
        assert cohort.stays[col].notna().all() and cohort.stays[col].ne("").all()
    assert set(cohort.codes["system"]) == {"icd9", "icd10"}
    assert cohort.observable("codes").empty  # coded at discharge, after 24 h
    assert {"Creatinine", "K", "Na", "Lactate", "Urine"} <= set(cohort.events["variable"])


@pytest.mark.realdata
def test_demo_all_stays_and_48h(demo):
    everyone = build(demo, min_stay_hours=0)
    assert len(everyone) == 140 and everyone.stays["patient_id"].nunique() == 100
    assert int(everyone.labels["in_hospital_death"].sum()) == 20  # 14.3 %, as PROVENANCE.md measured
    later = build(demo, prediction_hours=48)
    assert len(later) == 74 and int(later.labels["in_hospital_death"].sum()) == 12
    later.accounting.check()
