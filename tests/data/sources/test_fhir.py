"""FHIR R4 source: carebundle's synthetic R4 bundles and NDJSON, hand-made edge cases, exact row accounting."""

import copy
import json

import carebundle
import numpy as np
import pytest
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_source
from healthfusion.data.sources.fhir import CODE_MAP, build

runner = CliRunner()


@pytest.fixture(scope="module")
def carebundle_folder(tmp_path_factory):
    """12 single-visit bundles as JSON, 8 more as bulk NDJSON, one 3-visit history bundle."""
    root = tmp_path_factory.mktemp("fhir")
    bundles = carebundle.generate_cohort(count=20, seed=3)
    for i, bundle in enumerate(bundles[:12]):
        (root / f"bundle{i}.json").write_text(carebundle.to_json(bundle))
    (root / "bulk").mkdir()
    for rtype, text in carebundle.to_ndjson(bundles[12:]).items():
        (root / "bulk" / f"{rtype}.ndjson").write_text(text)
    (root / "history.json").write_text(carebundle.to_json(carebundle.generate_history(seed=5, index=99, visits=3)))
    return root


def _raw_resources(root):
    out = []
    for path in sorted(root.rglob("*.json")):
        out += [e["resource"] for e in json.loads(path.read_text())["entry"]]
    for path in sorted(root.rglob("*.ndjson")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def test_carebundle_cohort_counts_every_resource_once(carebundle_folder):
    raw = _raw_resources(carebundle_folder)
    cohort = get_source("fhir")(carebundle_folder, task="condition:I10")
    acc = cohort.accounting
    acc.check()
    by_type = {t: sum(r["resourceType"] == t for r in raw) for t in ("Patient", "Encounter", "Observation", "Condition")}
    for rtype, n in by_type.items():
        assert acc.tables[rtype].read == n == acc.tables[rtype].used, rtype
    assert acc.tables["other resources"].read == len(raw) - sum(by_type.values())
    assert acc.tables["other resources"].dropped == {"resource type not read": len(raw) - sum(by_type.values())}
    assert len(raw) == 938 and len(cohort) == by_type["Encounter"] == 23
    assert cohort.stays["patient_id"].nunique() == by_type["Patient"] == 21
    assert set(cohort.stays["care_unit"]) == {"AMB"} and set(cohort.stays["sex"]) == {"F", "M"}

    # every heart rate of the input is an HR event with the same value
    hr = sorted(float(r["valueQuantity"]["value"]) for r in raw if r["resourceType"] == "Observation"
                and r["code"]["coding"][0]["code"] == "8867-4")
    assert sorted(cohort.events.loc[cohort.events["variable"] == "HR", "value"]) == hr
    # the blood pressure panel gives one event per component; an unmapped LOINC code is kept under its code
    n_bp = sum(r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "85354-9" for r in raw)
    assert (cohort.events["variable"] == "NISysABP").sum() == n_bp == (cohort.events["variable"] == "NIDiasABP").sum()
    assert (cohort.events["variable"] == "LOINC/2075-0").sum() > 0  # chloride: not a toolkit variable
    assert set(cohort.events["variable"]) >= {"HR", "Temp", "Na", "Creatinine", "Weight"}
    assert cohort.events["time"].between(0, 1).all()  # observations during the 30-minute visits

    # label: the patients with an I10 Condition, computed straight from the JSON
    refs = {}
    for path in sorted(carebundle_folder.rglob("*.json")):
        for e in json.loads(path.read_text())["entry"]:
            refs[e["fullUrl"]] = e["resource"].get("id") or e["fullUrl"].rsplit(":", 1)[-1]
    hypertensive = set()
    for r in raw:
        if r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"].startswith("I10"):
            ref = r["subject"]["reference"]
            hypertensive.add(refs.get(ref, ref.split("/")[-1]))
    label = cohort.labels.set_index("stay_id")["condition_I10"]
    patient = cohort.stays.set_index("stay_id")["patient_id"]
    assert {patient[s] for s in label.index[label == 1]} == hypertensive and 0 < len(hypertensive) < 21
    assert not cohort.codes["code"].str.startswith("I10").any()  # the label's conditions never reach the inputs
    assert set(cohort.codes["system"]) == {"icd10"}
    assert cohort.meta.label("condition_I10").kind == "binary"


def _bundle(*resources):
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r.pop('_uuid')}", "resource": r} for r in resources]}


PATIENT = {"_uuid": "p1", "resourceType": "Patient", "gender": "male", "birthDate": "1950-01-01"}
ENCOUNTER = {"_uuid": "e1", "resourceType": "Encounter", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
             "subject": {"reference": "urn:uuid:p1"},
             "period": {"start": "2020-01-01T00:00:00Z", "end": "2020-01-03T00:00:00Z"}}


def _obs(uuid, loinc, value, unit, t="2020-01-01T06:00:00Z", encounter=True, **extra):
    res = {"_uuid": uuid, "resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
           "subject": {"reference": "urn:uuid:p1"}, "effectiveDateTime": t,
           "valueQuantity": {"value": value, "code": unit, "system": "http://unitsofmeasure.org"}}
    if encounter:
        res["encounter"] = {"reference": "urn:uuid:e1"}
    res.update(extra)
    return res


def _write(tmp_path, bundle, name="b.json"):
    (tmp_path / name).write_text(json.dumps(bundle))
    return tmp_path


def test_units_times_and_every_drop_reason(tmp_path):
    bundle = _bundle(
        copy.deepcopy(PATIENT), copy.deepcopy(ENCOUNTER),
        _obs("o1", "8310-5", 98.6, "[degF]"),  # Temp 37 C at 6 h
        _obs("o2", "8867-4", 80, "/min", t="2020-01-02T00:00:00Z", encounter=False),  # inside the period: 24 h
        _obs("o3", "8867-4", 80, "/min", t="2021-01-01T00:00:00Z", encounter=False),  # outside every encounter
        _obs("o4", "8867-4", 80, "/min", status="entered-in-error"),
        _obs("o5", "8310-5", 300, "K"),  # unit not convertible
        {"_uuid": "o6", "resourceType": "Observation", "status": "final", "code": {"text": "note"},
         "subject": {"reference": "urn:uuid:p1"}, "effectiveDateTime": "2020-01-01T01:00:00Z", "valueString": "ok"},
        {"_uuid": "c1", "resourceType": "Condition", "subject": {"reference": "urn:uuid:p1"},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}},
        {"_uuid": "c2", "resourceType": "Condition", "subject": {"reference": "urn:uuid:nobody"},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}},
        {"_uuid": "x1", "resourceType": "Practitioner"},
    )
    _write(tmp_path, bundle)
    _write(tmp_path, _bundle(copy.deepcopy(PATIENT)), name="again.json")  # the same patient twice
    cohort = build(tmp_path, hours=12)
    acc = cohort.accounting.tables
    assert acc["Observation"].dropped == {"outside every encounter of the patient": 1, "status entered-in-error": 1,
                                          "unit not convertible": 1, "no numeric value": 1}
    assert acc["Observation"].used == 2
    assert acc["Patient"].read == 2 and acc["Patient"].dropped == {"duplicate resource": 1}
    assert acc["Condition"].dropped == {"subject not found": 1} and acc["Condition"].used == 1
    assert acc["other resources"].dropped == {"resource type not read": 1}
    events = cohort.events.set_index("variable")
    assert events.loc["Temp", "time"] == 6.0 and events.loc["Temp", "value"] == pytest.approx(37.0)
    assert events.loc["HR", "time"] == 24.0
    assert cohort.codes.iloc[0].to_dict() == {"stay_id": "e1", "time": 0.0, "system": "snomed", "code": "38341003"}
    stay = cohort.stays.iloc[0]
    assert stay["prediction_time"] == 12.0 and stay["care_unit"] == "IMP" and stay["age_group"] == "60-79"
    assert cohort.static.iloc[0]["age"] == pytest.approx(70.0, abs=0.01)
    assert cohort.labels is None
    assert len(cohort.observable("events")) == 1  # the 24 h heart rate is after the 12 h prediction time
    default = build(tmp_path)
    assert default.stays.iloc[0]["prediction_time"] == 48.0  # the encounter's length
    assert "8867-4" in CODE_MAP and CODE_MAP["8867-4"].variable == "HR"


def test_invalid_resources_name_file_and_entry(tmp_path):
    bad = _obs("o1", "8867-4", "abc", "/min")
    _write(tmp_path, _bundle(copy.deepcopy(PATIENT), copy.deepcopy(ENCOUNTER), bad))
    with pytest.raises(SourceError, match=r"b\.json, entry 2: Observation .*valueQuantity\.value"):
        build(tmp_path)
    (tmp_path / "b.json").unlink()
    (tmp_path / "x.ndjson").write_text('{"resourceType": "Patient", "id": "1"}\n{not json\n')
    with pytest.raises(SourceError, match=r"x\.ndjson, line 2: not JSON"):
        build(tmp_path)
    with pytest.raises(SourceError, match="condition:<code prefix>"):
        build(tmp_path, task="death")
    with pytest.raises(SourceError, match="no .json or .ndjson"):
        build(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)


def test_cli_builds_a_fhir_cohort(carebundle_folder, tmp_path):
    result = runner.invoke(app, ["cohort", "build", "--source", "fhir", "--path", str(carebundle_folder),
                                 "--task", "condition:E11", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "Wrote 23 stays" in result.output and "resource type not read" in result.output
    assert Cohort.load(tmp_path / "c").meta.labels[0].name == "condition_E11"
    bad = runner.invoke(app, ["cohort", "build", "--source", "fhir", "--path", str(tmp_path / "nope"),
                              "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "does not exist" in bad.output


def test_in_hospital_death_from_patient_deceased(tmp_path):
    died = dict(copy.deepcopy(PATIENT), deceasedDateTime="2020-01-02T10:00:00Z")
    later = {"_uuid": "p2", "resourceType": "Patient", "gender": "female", "deceasedDateTime": "2021-05-01"}
    unknown = {"_uuid": "p3", "resourceType": "Patient", "deceasedBoolean": True}
    encounters = [dict(copy.deepcopy(ENCOUNTER), _uuid=f"e{i}", subject={"reference": f"urn:uuid:p{i}"})
                  for i in (1, 2, 3)]
    _write(tmp_path, _bundle(died, later, unknown, *encounters))
    cohort = build(tmp_path, task="in_hospital_death")
    label = cohort.labels.set_index("stay_id")["in_hospital_death"]
    assert label["e1"] == 1.0 and label["e2"] == 0.0 and np.isnan(label["e3"])
    assert cohort.meta.label("in_hospital_death").kind == "binary"
