"""eICU reader: a small eICU-format extract written here, and the eICU demo when ../shared/data exists."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source, io
from healthfusion.data.sources.eicu import build

# ---------------------------------------------------------------------------------------------- a tiny extract
# stays 1 (50 h, died) and 2 (33.3 h) of patient 001-1 at hospital 10; stay 3 (10 h) and stay 4 (no discharge
# offset) at hospital 20; hospital 30 has no stay.
IO = "flowsheet|Flowsheet Cell Labels|I&O|"
PERIODIC = [  # stay, offset (min), temperature, sao2, heartrate, cvp
    (1, 60, 37.2, 98, 80, None),  # 3 values
    (1, 120, 98.6, None, 85, None),  # 2 values, the Fahrenheit temperature is implausible
    (1, 65, None, None, None, 10),  # only an unmapped column: no mapped value
    (3, 60, 37.0, 97, 70, None),  # stay excluded (10 h): stay not in cohort
    (1, -2000, 37.0, None, None, None),  # 33 h before admission: outside stay window
    (2, 30, None, None, 500, None),  # 1 value, implausible
    (1, 2000, None, None, 90, None),  # 33 h, after the prediction time: kept
]
LAB = [  # stay, offset, labname, labresult
    (1, 30, "creatinine", 1.1),  # used
    (1, 30, "FiO2", 50.0),  # used, % -> 0.5
    (1, 30, "MCV", 90.0),  # unmapped item
    (1, 30, "pH", 74.0),  # implausible value
    (2, 40, "potassium", None),  # missing value
    (3, 40, "sodium", 140.0),  # stay not in cohort
]


def _write(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


def make_eicu(root: Path) -> Path:
    _write(root / "patient.csv.gz", pd.DataFrame({
        "patientunitstayid": [1, 2, 3, 4], "patienthealthsystemstayid": [11, 12, 13, 14],
        "uniquepid": ["001-1", "001-1", "002-2", "003-3"], "hospitalid": [10, 10, 20, 20],
        "unittype": ["Med-Surg ICU", "MICU", "SICU", "SICU"], "age": ["> 89", "45", "", "70"],
        "gender": ["Female", "Male", "", "Male"], "ethnicity": ["Caucasian", "African American", "", "Asian"],
        "hospitaldischargestatus": ["Expired", "Alive", "", "Alive"],
        "unitdischargeoffset": [3000, 2000, 600, None], "unitadmitsource": ["Emergency Department", "Floor", "", ""],
        "admissionheight": [160.0, 600.0, None, None], "admissionweight": [60.0, 80.0, None, None]}))
    _write(root / "hospital.csv.gz", pd.DataFrame({
        "hospitalid": [10, 20, 30], "numbedscategory": ["<100", "100 - 249", "<100"],
        "teachingstatus": [False, True, False], "region": ["Midwest", "South", "West"]}))
    _write(root / "vitalPeriodic.csv.gz", pd.DataFrame({
        "vitalperiodicid": range(len(PERIODIC)), "patientunitstayid": [r[0] for r in PERIODIC],
        "observationoffset": [r[1] for r in PERIODIC], "temperature": [r[2] for r in PERIODIC],
        "sao2": [r[3] for r in PERIODIC], "heartrate": [r[4] for r in PERIODIC], "respiration": None,
        "cvp": [r[5] for r in PERIODIC], "etco2": None, "systemicsystolic": None, "systemicdiastolic": None,
        "systemicmean": None, "pasystolic": None, "padiastolic": None, "pamean": None, "st1": None, "st2": None,
        "st3": None, "icp": None}))
    _write(root / "vitalAperiodic.csv.gz", pd.DataFrame({
        "vitalaperiodicid": [1], "patientunitstayid": [2], "observationoffset": [100],
        "noninvasivesystolic": [120.0], "noninvasivediastolic": [80.0], "noninvasivemean": [93.0]}))
    _write(root / "lab.csv.gz", pd.DataFrame({
        "labid": range(len(LAB)), "patientunitstayid": [r[0] for r in LAB], "labresultoffset": [r[1] for r in LAB],
        "labtypeid": 1, "labname": [r[2] for r in LAB], "labresult": [r[3] for r in LAB],
        "labresulttext": [r[3] for r in LAB], "labmeasurenamesystem": "", "labmeasurenameinterface": "",
        "labresultrevisedoffset": [r[1] + 5 for r in LAB]}))
    _write(root / "intakeOutput.csv.gz", pd.DataFrame({
        "intakeoutputid": range(5), "patientunitstayid": 1, "intakeoutputoffset": [60, 60, 60, 60, 60],
        "intaketotal": 0, "outputtotal": 0, "dialysistotal": 0, "nettotal": 0,
        "intakeoutputentryoffset": [90, 30, 60, 60, 60],
        "cellpath": [IO + "Output (ml)|Urine", IO + "Weight|Bodyweight (kg)", IO + "Weight|Bodyweight (lb)",
                     IO + "Output (ml)|Urine Count", IO + "Intake (ml)|Crystalloids (ml)|norepinephrine"],
        "celllabel": ["Urine", "Bodyweight (kg)", "Bodyweight (lb)", "Urine Count", "norepinephrine"],
        "cellvaluenumeric": [200.0, 70.0, 154.0, 1.0, 10.0], "cellvaluetext": ""}))
    _write(root / "diagnosis.csv.gz", pd.DataFrame({
        "diagnosisid": range(4), "patientunitstayid": [1, 1, 3, 2], "activeupondischarge": False,
        "diagnosisoffset": [100, 200, 100, 5000], "diagnosisstring": "x",
        "icd9code": ["401.9, I10", "", "518.81, J96.00", "E87.1"], "diagnosispriority": "Major"}))
    _write(root / "apachePatientResult.csv.gz", pd.DataFrame({
        "apachepatientresultsid": range(3), "patientunitstayid": [1, 1, 2], "apacheversion": ["IV", "IVa", "IVa"],
        "apachescore": [70, 80, -1], "predictedhospitalmortality": [0.3, 0.4, -1]}))
    aps = {c: [1.0, -1.0] for c in ("intubated", "vent", "dialysis", "eyes", "motor", "verbal", "meds", "urine",
                                    "wbc", "temperature", "respiratoryrate", "sodium", "heartrate", "meanbp", "ph",
                                    "hematocrit", "creatinine", "albumin", "pao2", "pco2", "bun", "glucose",
                                    "bilirubin", "fio2")}
    _write(root / "apacheApsVar.csv.gz", pd.DataFrame({"apacheapsvarid": [1, 2], "patientunitstayid": [1, 2], **aps}))
    return root


@pytest.fixture
def extract(tmp_path) -> Path:
    return make_eicu(tmp_path / "eicu")


def _values(cohort: Cohort, variable: str) -> list:
    ev = cohort.events
    return ev[ev["variable"] == variable].sort_values(["stay_id", "time"])["value"].tolist()


def test_vital_periodic_rows_and_values_are_counted(extract):
    cohort = build(extract)
    acc = cohort.accounting.to_dict()
    assert acc["vitalPeriodic"] == {"read": 7, "used": 4, "dropped": {
        "stay not in cohort": 1, "outside stay window": 1, "no mapped value": 1}}
    assert acc["vitalPeriodic values"] == {"read": 7, "used": 5, "dropped": {"implausible value": 2}}
    assert _values(cohort, "HR") == [80.0, 85.0, 90.0]
    assert _values(cohort, "Temp") == [37.2] and _values(cohort, "SpO2") == [98.0]
    hr = cohort.events[cohort.events["variable"] == "HR"]
    assert sorted(hr["time"]) == pytest.approx([1.0, 2.0, 2000 / 60])
    observable = cohort.observable("events")
    assert sorted(observable.loc[observable["variable"] == "HR", "value"]) == [80.0, 85.0]
    assert _values(cohort, "NISysABP") == [120.0]
    cohort.accounting.check()


def test_lab_table(extract):
    cohort = build(extract)
    assert cohort.accounting.to_dict()["lab"] == {"read": 6, "used": 2, "dropped": {
        "unmapped item": 1, "stay not in cohort": 1, "missing value": 1, "implausible value": 1}}
    assert _values(cohort, "Creatinine") == [1.1]
    assert _values(cohort, "FiO2") == [0.5]


def test_intake_output_urine_and_weight(extract):
    cohort = build(extract)
    assert cohort.accounting.to_dict()["intakeOutput"] == {"read": 5, "used": 2, "dropped": {"unmapped item": 3}}
    urine = cohort.events[cohort.events["variable"] == "Urine"]
    assert urine["value"].tolist() == [200.0]
    assert urine["time"].tolist() == pytest.approx([1.5])  # the later of recorded (60) and entered (90) minutes
    assert _values(cohort, "Weight") == [70.0]


def test_diagnosis_codes_split_into_icd9_and_icd10(extract):
    cohort = build(extract)
    codes = cohort.codes.sort_values("system")
    assert codes[["stay_id", "system", "code"]].values.tolist() == [["1", "icd10", "I10"], ["1", "icd9", "4019"]]
    assert codes["time"].tolist() == pytest.approx([100 / 60] * 2)
    assert cohort.accounting.to_dict()["diagnosis"] == {"read": 4, "used": 1, "dropped": {
        "stay not in cohort": 1, "missing code": 1, "outside stay window": 1}}


def test_stays_domains_labels_and_reference_scores(extract):
    cohort = build(extract, prediction_hours=24)
    assert cohort.stay_ids.tolist() == ["1", "2"]
    assert cohort.accounting.to_dict()["patient"] == {"read": 4, "used": 2, "dropped": {
        "missing unitdischargeoffset": 1, "shorter than min_stay_hours": 1}}
    stays = cohort.stays.set_index("stay_id")
    assert stays.loc["1", ["patient_id", "site", "region", "care_unit", "sex", "age_group", "ethnicity"]].tolist() == [
        "001-1", "10", "Midwest", "Med-Surg ICU", "F", "80+", "White"]
    assert stays.loc["2", ["sex", "ethnicity"]].tolist() == ["M", "Black"]
    static = cohort.static.set_index("stay_id")
    assert static.loc["1", "Age"] == 90 and static.loc["1", "Height"] == 160.0
    assert np.isnan(static.loc["2", "Height"])  # 600 cm is implausible
    assert cohort.accounting.to_dict()["patient values"]["dropped"] == {"implausible value": 1}
    labels = cohort.labels.set_index("stay_id")
    assert labels["in_hospital_death"].tolist() == [1.0, 0.0]
    assert labels["icu_length_of_stay"].tolist() == pytest.approx([3000 / 1440, 2000 / 1440])
    assert labels.loc["1", "apache_iva_predicted_death"] == 0.4 and labels.loc["1", "apache_iva_score"] == 80
    assert np.isnan(labels.loc["2", "apache_iva_predicted_death"])
    assert "apache_iva_score" not in cohort.static.columns
    assert cohort.accounting.to_dict()["hospital"]["dropped"] == {"no stay in cohort": 2}  # 20's stays left
    everyone = build(extract, min_stay_hours=0)
    assert len(everyone) == 3 and everyone.stays.set_index("stay_id").loc["3", "sex"] == "Unknown"
    assert np.isnan(everyone.labels.set_index("stay_id").loc["3", "in_hospital_death"])


def test_apache_features_are_opt_in_and_refused_before_24h(extract):
    assert not any(c.startswith("aps_") for c in build(extract).static.columns)
    cohort = build(extract, apache_features=True)
    static = cohort.static.set_index("stay_id")
    assert static.loc["1", "aps_heartrate"] == 1.0 and np.isnan(static.loc["2", "aps_heartrate"])
    assert cohort.meta.feature_types["aps_heartrate"] == "numeric"
    with pytest.raises(SourceError, match="apache_features=True needs prediction_hours >= 24"):
        build(extract, prediction_hours=12, min_stay_hours=0, apache_features=True)


def test_optional_tables_absent(extract):
    for name in ("vitalPeriodic", "lab", "apachePatientResult"):
        (extract / f"{name}.csv.gz").unlink()
    cohort = build(extract)
    assert {"vitalPeriodic", "lab", "apachePatientResult"}.isdisjoint(cohort.accounting.to_dict())
    assert set(cohort.events["variable"]) == {"NISysABP", "NIDiasABP", "NIMAP", "Urine", "Weight"}
    assert [s.name for s in cohort.meta.labels] == ["in_hospital_death", "icu_length_of_stay"]


def test_streaming_in_small_blocks_gives_the_same_cohort(extract, monkeypatch):
    whole = build(extract)
    monkeypatch.setattr(io, "STREAM_BLOCK_BYTES", 400)  # a little over the longest header
    blocks = build(extract)
    assert blocks.accounting.to_dict() == whole.accounting.to_dict()
    key = ["stay_id", "time", "variable", "value"]
    pd.testing.assert_frame_equal(blocks.events.sort_values(key).reset_index(drop=True),
                                  whole.events.sort_values(key).reset_index(drop=True))


def test_registered_and_round_trips(extract, tmp_path):
    assert get_source("eicu") is build
    loaded = Cohort.load(build(extract).save(tmp_path / "out"))
    assert len(loaded) == 2 and loaded.meta.label("apache_iva_score").kind == "regression"


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_discharge_status_names_line(extract):
    path = extract / "patient.csv.gz"
    df = pd.read_csv(path, dtype=str)
    df.loc[1, "hospitaldischargestatus"] = "Transferred"
    df.to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"'hospitaldischargestatus', line 3: 'Transferred' is not Alive or Expired"):
        build(extract)


def test_bad_age_names_line(extract):
    path = extract / "patient.csv.gz"
    df = pd.read_csv(path, dtype=str)
    df.loc[0, "age"] = "old"
    df.to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"patient\.csv\.gz, column 'age', line 2: 'old' is not a number"):
        build(extract)


def test_missing_column_and_empty_file(extract):
    path = extract / "lab.csv.gz"
    pd.read_csv(path).drop(columns=["labname"]).to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"lab\.csv\.gz lacks column\(s\) \['labname'\]"):
        build(extract)
    path.unlink()
    (extract / "lab.csv").write_text("")
    with pytest.raises(SourceError, match=r"lab\.csv is empty"):
        build(extract)


def test_row_with_extra_field(extract):
    path = extract / "vitalAperiodic.csv.gz"
    text = pd.read_csv(path).to_csv(index=False) + "2,2,200,120,80,93,7\n"
    path.unlink()
    (extract / "vitalAperiodic.csv").write_text(text)
    with pytest.raises(SourceError, match=r"vitalAperiodic\.csv could not be parsed as CSV: .*Expected 6 columns"):
        build(extract)


def test_non_numeric_offset_names_line(extract):
    path = extract / "vitalPeriodic.csv.gz"
    df = pd.read_csv(path, dtype=str)
    df.loc[3, "observationoffset"] = "noon"
    df.to_csv(path, index=False)
    with pytest.raises(SourceError, match=r"column 'observationoffset', line 5: 'noon' is not a number"):
        build(extract)


def test_unknown_task(extract):
    with pytest.raises(SourceError, match="Task 'readmission_30d' is not a label of the eICU cohort"):
        build(extract, task="readmission_30d")


# ---------------------------------------------------------------------------------------------- the real demo
@pytest.fixture(scope="module")
def demo(shared_dataset) -> Path:
    return shared_dataset("eicu_demo")  # from conftest.py: skips without ../shared/data, fails under CI=true


@pytest.mark.realdata
def test_demo_cohort_24h(demo):
    cohort = build(demo, prediction_hours=24)
    cohort.accounting.check()
    acc = cohort.accounting.to_dict()
    assert acc["patient"] == {"read": 2520, "used": 1627, "dropped": {"shorter than min_stay_hours": 893}}
    assert acc["vitalAperiodic"]["read"] == 274_088 and acc["diagnosis"]["read"] == 24_978
    assert acc["intakeOutput"]["read"] == 100_466
    assert int(cohort.labels["in_hospital_death"].sum()) == 141
    assert cohort.stays["site"].nunique() == 186
    for col in ("site", "region", "care_unit", "age_group", "sex", "ethnicity"):
        assert cohort.stays[col].notna().all()
    assert set(cohort.codes["system"]) == {"icd9", "icd10"}
    assert not cohort.observable("codes").empty  # eICU diagnoses are entered during the stay
    assert {"NISysABP", "NIDiasABP", "NIMAP", "Urine", "Weight"} <= set(cohort.events["variable"])
    assert cohort.labels["apache_iva_predicted_death"].notna().sum() > 1000


@pytest.mark.realdata
def test_demo_all_stays(demo):
    cohort = build(demo, min_stay_hours=0)
    assert len(cohort) == 2520 and cohort.stays["patient_id"].nunique() == 1841
    deaths = cohort.labels["in_hospital_death"]
    assert int(deaths.sum()) == 212 and int(deaths.isna().sum()) == 28  # as PROVENANCE.md measured
