"""UCI readers: Diabetes 130-US hospitals and Heart Disease (hand-made files, and the shared copies when present)."""

import pandas as pd
import pytest

from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source
from healthfusion.data.sources.uci import (
    ADMISSION_CATEGORICAL,
    ADMISSION_NUMERIC,
    DIABETES_COLUMNS,
    MEDICATIONS,
    build_diabetes130,
    build_heart_disease,
)


# ---------------------------------------------------------------------------------------------- diabetes 130
def diabetes_rows() -> pd.DataFrame:
    base = {c: "No" for c in MEDICATIONS}
    base.update({
        "race": "Caucasian", "gender": "Female", "age": "[70-80)", "weight": "?", "admission_type_id": "1",
        "discharge_disposition_id": "1", "admission_source_id": "7", "payer_code": "?", "medical_specialty": "?",
        "number_outpatient": "0", "number_emergency": "0", "number_inpatient": "1", "num_lab_procedures": "40",
        "num_procedures": "1", "num_medications": "12", "number_diagnoses": "5", "max_glu_serum": "None",
        "A1Cresult": ">8", "change": "Ch", "diabetesMed": "Yes",
    })
    rows = [
        {**base, "encounter_id": "10", "patient_nbr": "1", "time_in_hospital": "3", "diag_1": "8", "diag_2": "250.83",
         "diag_3": "?", "readmitted": "<30"},
        {**base, "encounter_id": "11", "patient_nbr": "1", "time_in_hospital": "1", "diag_1": "V57", "diag_2": "38.1",
         "diag_3": "428", "readmitted": "NO", "race": "?", "gender": "Unknown/Invalid", "age": "[30-40)"},
        {**base, "encounter_id": "12", "patient_nbr": "2", "time_in_hospital": "14", "diag_1": "E909",
         "diag_2": "?", "diag_3": "?", "readmitted": ">30", "race": "AfricanAmerican", "gender": "Male"},
    ]
    return pd.DataFrame(rows)[list(DIABETES_COLUMNS)]


@pytest.fixture
def diabetes_dir(tmp_path):
    diabetes_rows().to_csv(tmp_path / "diabetic_data.csv", index=False)
    (tmp_path / "IDs_mapping.csv").write_text(
        "admission_type_id,description\n1,Emergency\n,\ndischarge_disposition_id,description\n1,Discharged to home\n"
        ",\nadmission_source_id,description\n7, Emergency Room\n"
    )
    return tmp_path


def test_diabetes_at_discharge(diabetes_dir):
    cohort = get_source("diabetes130")(diabetes_dir)
    stays = cohort.stays.set_index("stay_id")
    assert stays["patient_id"].tolist() == ["1", "1", "2"]
    assert stays["prediction_time"].tolist() == [72.0, 24.0, 336.0]
    assert stays["ethnicity"].tolist() == ["White", "Unknown", "Black"]
    assert stays["sex"].tolist() == ["F", "Unknown", "M"]
    assert stays["age_group"].tolist() == ["60-79", "<40", "60-79"]
    static = cohort.static.set_index("stay_id")
    assert static.loc["10", "admission_source_id"] == "Emergency Room"
    assert static.loc["10", "max_glu_serum"] == "None"  # "not measured" is a category
    assert pd.isna(static.loc["10", "weight"]) and pd.isna(static.loc["11", "race"])  # "?" is missing
    assert static.loc["12", "time_in_hospital"] == 14.0
    assert cohort.meta.feature_types["time_in_hospital"] == "numeric"
    assert cohort.label("readmitted").tolist() == ["<30", "NO", ">30"]
    assert cohort.label("readmit_30d").tolist() == [1, 0, 0]
    assert "time_in_hospital" not in cohort.labels.columns  # never a label where it is a feature
    codes = cohort.codes
    assert codes.loc[codes["stay_id"] == "10", "code"].tolist() == ["008", "250.83"]
    assert codes.loc[codes["stay_id"] == "11", "code"].tolist() == ["V57", "038.1", "428"]
    assert (codes["system"] == "icd9").all() and len(cohort.observable("codes")) == len(codes)
    acc = cohort.accounting
    acc.check()
    assert acc.tables["diabetic_data diag_1..3"].dropped == {"missing value": 3}


def test_diabetes_at_admission_has_no_length_of_stay_feature(diabetes_dir):
    cohort = build_diabetes130(diabetes_dir / "diabetic_data.csv", task="time_in_hospital")
    assert set(cohort.static.columns) == {"stay_id", *ADMISSION_CATEGORICAL, *ADMISSION_NUMERIC}
    assert (cohort.stays["prediction_time"] == 0).all()
    assert cohort.label("time_in_hospital").tolist() == [3.0, 1.0, 14.0]
    assert cohort.meta.label("time_in_hospital").kind == "regression"
    assert len(cohort.observable("codes")) == 0  # coded at discharge: hidden at admission
    assert len(cohort.codes) == 6


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.assign(readmitted=["<30", "YES", "NO"]), r"line 3: readmitted is 'YES'; expected one of"),
        (lambda d: d.assign(time_in_hospital=["3", "0", "2"]), r"line 3: time_in_hospital is '0'"),
        (lambda d: d.assign(num_medications=["3", "many", "2"]), r"line 3: num_medications is 'many'"),
        (lambda d: d.assign(encounter_id=["10", "11", "10"]), r"line 4: encounter_id 10 appears more than once"),
        (lambda d: d.drop(columns="diag_2"), r"lacks column\(s\) \['diag_2'\]"),
    ],
)
def test_malformed_diabetes_raise(tmp_path, change, message):
    change(diabetes_rows()).to_csv(tmp_path / "diabetic_data.csv", index=False)
    with pytest.raises(SourceError, match=message):
        build_diabetes130(tmp_path)


def test_diabetes_missing_file_and_task(tmp_path):
    with pytest.raises(SourceError, match=r"holds no diabetic_data\.csv"):
        build_diabetes130(tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        build_diabetes130(tmp_path / "nope")
    with pytest.raises(SourceError, match="Task 'mortality' is not a Diabetes 130 label"):
        build_diabetes130(tmp_path, task="mortality")


@pytest.mark.realdata
def test_diabetes130_real(shared_dataset):
    cohort = build_diabetes130(shared_dataset("uci_diabetes130"))
    assert len(cohort) == 101_766 and cohort.stays["patient_id"].nunique() == 71_518
    assert cohort.label("readmitted").value_counts().to_dict() == {"NO": 54_864, ">30": 35_545, "<30": 11_357}
    assert cohort.label("readmit_30d").mean() == pytest.approx(0.1116, abs=1e-4)
    cohort.accounting.check()
    assert cohort.accounting.tables["diabetic_data"].used == 101_766
    assert cohort.stays["ethnicity"].value_counts()["Unknown"] == 2_273
    assert set(cohort.stays["age_group"]) == {"<40", "40-59", "60-79", "80+"}
    assert cohort.codes["code"].str.match(r"^(\d{3}(\.\d+)?|V\d{2}(\.\d+)?|E\d{3}(\.\d+)?)$").all()
    assert cohort.static["A1Cresult"].value_counts()["None"] == 84_748


# ---------------------------------------------------------------------------------------------- heart disease
CLEVELAND = "63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2\n"
SWISS = "32,0,1,95,0,?,0,127,0,.7,1,?,?,1\n\n35,1,4,?,0,?,0,130,1,?,?,?,7,3\n"


@pytest.fixture
def heart_dir(tmp_path):
    (tmp_path / "processed.cleveland.data").write_text(CLEVELAND)
    (tmp_path / "processed.switzerland.data").write_text(SWISS)
    return tmp_path


def test_heart_disease_sites_labels_and_missing(heart_dir):
    cohort = get_source("heart_disease")(heart_dir)
    assert list(cohort.stay_ids) == ["cleveland-001", "cleveland-002", "switzerland-001", "switzerland-003"]
    assert cohort.stays["site"].tolist() == ["Cleveland", "Cleveland", "Switzerland", "Switzerland"]
    assert cohort.stays["sex"].tolist() == ["M", "M", "F", "M"]
    assert cohort.label("disease").tolist() == [0, 1, 1, 1]
    assert cohort.label("num").tolist() == ["0", "2", "1", "3"]
    static = cohort.static.set_index("stay_id")
    assert pd.isna(static.loc["switzerland-001", "chol"])  # 0 = not measured
    assert pd.isna(static.loc["switzerland-003", "trestbps"]) and pd.isna(static.loc["switzerland-001", "ca"])
    assert static.loc["cleveland-001", "cp"] == "1" and cohort.meta.feature_types["cp"] == "categorical"
    acc = cohort.accounting
    acc.check()
    assert acc.tables["processed.switzerland.data"].used == 2
    assert len(build_heart_disease(heart_dir, sites=["switzerland"])) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("63,1,1,145,233,1,2,150,0,2.3,3,0,6\n", r"processed\.cleveland\.data, line 1: expected 14"),
        (CLEVELAND + "63,1,1,145,233,1,2,150,0,2.3,3,0,6,5\n", r"line 3: num is '5'; expected one of \[0, 1, 2, 3, 4\]"),
        (CLEVELAND + "63,1,1,145,233,1,2,150,0,2.3,3,0,6,?\n", r"line 3: num is '\?'"),
        ("63,2,1,145,233,1,2,150,0,2.3,3,0,6,0\n", r"line 1: sex is '2'; expected one of \[0, 1\]"),
        ("63,1,1,high,233,1,2,150,0,2.3,3,0,6,0\n", r"line 1: trestbps is 'high'; expected a number or \?"),
        ("", r"processed\.cleveland\.data is empty"),
    ],
)
def test_malformed_heart_disease_raise(tmp_path, text, message):
    (tmp_path / "processed.cleveland.data").write_text(text)
    with pytest.raises(SourceError, match=message):
        build_heart_disease(tmp_path)


def test_heart_disease_missing_inputs(tmp_path, heart_dir):
    with pytest.raises(SourceError, match="does not exist"):
        build_heart_disease(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds none of"):
        build_heart_disease(tmp_path / "empty")
    with pytest.raises(SourceError, match=r"Unknown site\(s\) \['boston'\]"):
        build_heart_disease(heart_dir, sites=["boston"])
    with pytest.raises(SourceError, match=r"processed\.va\.data does not exist"):
        build_heart_disease(heart_dir, sites=["va"])
    with pytest.raises(SourceError, match="choose 'disease' or 'num'"):
        build_heart_disease(heart_dir, task="death")


@pytest.mark.realdata
def test_heart_disease_real(shared_dataset):
    cohort = build_heart_disease(shared_dataset("uci_heart_disease"))
    assert len(cohort) == 920
    sizes = cohort.stays["site"].value_counts().to_dict()
    assert sizes == {"Cleveland": 303, "Hungary": 294, "VA Long Beach": 200, "Switzerland": 123}
    prevalence = cohort.label("disease").groupby(cohort.stays["site"].to_numpy()).mean().round(3).to_dict()
    assert prevalence == {"Cleveland": 0.459, "Hungary": 0.361, "Switzerland": 0.935, "VA Long Beach": 0.745}
    assert cohort.label("num").value_counts().sum() == 920
    assert cohort.static.set_index("stay_id").filter(like="switzerland", axis=0)["chol"].isna().all()
    cohort.accounting.check()
