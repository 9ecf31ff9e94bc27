"""FHIR R4: a folder of FHIR bundles (``*.json``) and bulk-export NDJSON files (``*.ndjson``) -> a cohort.

This is the only module that imports ``fhir.resources`` (lazily: ``pip install "healthfusion[fhir]"``); every
Patient, Encounter, Observation and Condition is validated against its R4 model (``fhir.resources.R4B``) before
it is read, and an invalid one is an error naming the file, entry and field.

How resources become the cohort
-------------------------------
``stays``   one per Encounter (``stay_id`` = its id, or the uuid of its ``fullUrl``): ``patient_id`` from its
            subject, ``care_unit`` = ``Encounter.class.code`` (``AMB``, ``IMP``, ``EMER``, ``ICU`` ...), ``sex``
            (F/M/Unknown) and ``age_group`` at ``period.start``, the admission (time 0). ``prediction_time`` is
            ``hours`` when given, else the encounter's length (``period.end``; without one, its last observation).
``static``  ``age`` (years at admission, from ``Patient.birthDate``) and ``gender`` (categorical).
``events``  Observations with a ``valueQuantity`` (and each ``component`` of a panel, e.g. blood pressure).
            A LOINC code in :data:`CODE_MAP` becomes the toolkit's variable in its canonical unit (e.g. 8867-4 ->
            ``HR``; 8310-5 in ``[degF]`` -> ``Temp`` in Celsius); any other LOINC code is kept as ``LOINC/<code>``
            with its value as given. Time = ``effectiveDateTime`` (or ``effectivePeriod.start``, or ``issued``).
``codes``   Conditions: ``system`` from the coding system (``icd10``, ``icd9``, ``snomed``, else the URL) and
            ``code``, at ``onsetDateTime`` (or ``onsetPeriod.start``, ``recordedDate``; at admission without any).
``labels``  with ``task="condition:<prefix>"``: binary ``condition_<prefix>`` = 1 when the patient has a Condition
            whose code starts with ``<prefix>`` (e.g. ``condition:E11`` for type 2 diabetes), else 0. Those
            Conditions make the label only; they are not written to ``codes`` (no label leaks into the inputs).
            With ``task="in_hospital_death"``: binary, 1 when ``Patient.deceasedDateTime`` falls in the
            encounter's period, 0 otherwise, missing for ``deceasedBoolean: true`` without a date.

A resource belongs to the stay of the Encounter it references; an Observation without one goes to the patient's
encounter whose period holds its time, and a Condition without one to every stay of its patient.

Row accounting
--------------
One table per resource type read (``Patient``, ``Encounter``, ``Observation``, ``Condition``) and ``other
resources``; every resource is counted once: used, or dropped as ``duplicate resource`` (same type and id seen
before), ``resource type not read``, ``status <status>`` (entered-in-error, cancelled, refuted), ``subject not
found``, ``no period.start``, ``no encounter`` (a patient without one), ``encounter not read``, ``outside every
encounter of the patient``, ``no effective time``, ``no numeric value``, ``no LOINC code``, ``unit not
convertible`` or ``no coded condition``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.schema import CohortMeta, LabelSpec
from healthfusion.data.sources.itemmap import F_TO_C, LB_TO_KG, UNKNOWN, age_group, sex_group
from healthfusion.files import display_path
from healthfusion.optional import require

log = logging.getLogger(__name__)

READ_TYPES = ("Patient", "Encounter", "Observation", "Condition")
OTHER = "other resources"
LOINC = "http://loinc.org"
SYSTEMS = {"http://hl7.org/fhir/sid/icd-10-cm": "icd10", "http://hl7.org/fhir/sid/icd-10": "icd10",
           "http://hl7.org/fhir/sid/icd-9-cm": "icd9", "http://snomed.info/sct": "snomed"}
BAD_STATUS = {"entered-in-error", "cancelled", "refuted"}
DEATH = "in_hospital_death"


@dataclass(frozen=True)
class LoincMapping:
    """LOINC ``code`` -> toolkit ``variable``; ``units`` maps each accepted UCUM unit to ``(factor, offset)``
    (canonical = value * factor + offset)."""

    code: str
    variable: str
    units: dict


_SAME = (1.0, 0.0)
# The code map: LOINC -> the toolkit's canonical variables (units of healthfusion.data.plausibility).
CODE_MAP: dict[str, LoincMapping] = {m.code: m for m in (
    LoincMapping("8867-4", "HR", {"/min": _SAME}),
    LoincMapping("9279-1", "RespRate", {"/min": _SAME}),
    LoincMapping("8310-5", "Temp", {"Cel": _SAME, "[degF]": F_TO_C}),
    LoincMapping("59408-5", "SpO2", {"%": _SAME}),
    LoincMapping("2708-6", "SaO2", {"%": _SAME}),
    LoincMapping("8480-6", "NISysABP", {"mm[Hg]": _SAME}),
    LoincMapping("8462-4", "NIDiasABP", {"mm[Hg]": _SAME}),
    LoincMapping("8478-0", "NIMAP", {"mm[Hg]": _SAME}),
    LoincMapping("3150-0", "FiO2", {"%": (0.01, 0.0), "1": _SAME}),
    LoincMapping("9269-2", "GCS", {"{score}": _SAME, "1": _SAME}),
    LoincMapping("2744-1", "pH", {"[pH]": _SAME, "1": _SAME}),
    LoincMapping("2019-8", "PaCO2", {"mm[Hg]": _SAME}),
    LoincMapping("2703-7", "PaO2", {"mm[Hg]": _SAME}),
    LoincMapping("2028-9", "HCO3", {"mmol/L": _SAME}),  # total CO2, the bicarbonate of a metabolic panel
    LoincMapping("1963-8", "HCO3", {"mmol/L": _SAME}),
    LoincMapping("2345-7", "Glucose", {"mg/dL": _SAME, "mmol/L": (18.016, 0.0)}),
    LoincMapping("2823-3", "K", {"mmol/L": _SAME}),
    LoincMapping("2951-2", "Na", {"mmol/L": _SAME}),
    LoincMapping("19123-9", "Mg", {"mg/dL": _SAME}),
    LoincMapping("3094-0", "BUN", {"mg/dL": _SAME}),
    LoincMapping("2160-0", "Creatinine", {"mg/dL": _SAME, "umol/L": (1 / 88.42, 0.0)}),
    LoincMapping("4544-3", "HCT", {"%": _SAME}),
    LoincMapping("6690-2", "WBC", {"10*3/uL": _SAME}),
    LoincMapping("777-3", "Platelets", {"10*3/uL": _SAME}),
    LoincMapping("2524-7", "Lactate", {"mmol/L": _SAME}),
    LoincMapping("1975-2", "Bilirubin", {"mg/dL": _SAME}),
    LoincMapping("1751-7", "Albumin", {"g/dL": _SAME}),
    LoincMapping("6768-6", "ALP", {"U/L": _SAME}),
    LoincMapping("1742-6", "ALT", {"U/L": _SAME}),
    LoincMapping("1920-8", "AST", {"U/L": _SAME}),
    LoincMapping("2093-3", "Cholesterol", {"mg/dL": _SAME}),
    LoincMapping("29463-7", "Weight", {"kg": _SAME, "[lb_av]": (LB_TO_KG, 0.0)}),
    LoincMapping("8302-2", "Height", {"cm": _SAME}),
)}


def _model(resource_type: str):
    r4b = require("fhir.resources.R4B", extra="fhir", needed_for="Reading FHIR")
    return r4b.get_fhir_model_class(resource_type)


def build(path: str | Path, *, task: str | None = None, progress: bool = False, hours: float | None = None) -> Cohort:
    """Read a folder of FHIR R4 bundles / NDJSON files (or one file) into a cohort; see the module docstring.

    Parameters
    ----------
    path : str or Path
        A ``.json`` bundle, an ``.ndjson`` file, or a folder searched recursively for both.
    task : str, optional
        ``"condition:<code prefix>"`` adds the binary label ``condition_<prefix>``, ``"in_hospital_death"`` the
        binary label of that name; None reads no label.
    progress : bool, default False
        Log a line per file.
    hours : float, optional
        Prediction time in hours after admission for every stay (default: the encounter's length).

    Raises
    ------
    SourceError
        No FHIR files; a file is not JSON (naming file and line); a resource fails its R4 model (naming file,
        entry, type, id and field); a task that is not ``condition:<prefix>``.
    """
    label_prefix = _label_prefix(task)
    acc = RowAccounting()
    resources = _read_all(Path(path), acc, progress)
    patients = _patients(resources["Patient"], acc)
    stays = _encounters(resources["Encounter"], patients, acc, hours)
    enc_by_key = {k: s for s in stays for k in s["keys"]}
    events = _observations(resources["Observation"], patients, stays, enc_by_key, acc)
    codes, labelled = _conditions(resources["Condition"], patients, stays, enc_by_key, acc, label_prefix)
    with_stay = {s["patient_id"] for s in stays}
    unique = {p["patient_id"] for p in patients.values()}
    acc.drop("Patient", "no encounter", len(unique - with_stay))
    acc.use("Patient", len(unique & with_stay))
    if not stays:
        raise SourceError(f"{path} holds no usable Encounter: every stay of a FHIR cohort is an Encounter "
                          "(with a subject and a period.start).")
    stay_frame = pd.DataFrame([{k: s[k] for k in ("stay_id", "patient_id", "prediction_time", "care_unit", "sex",
                                                    "age_group")} for s in stays])
    if hours is None:  # the encounter's length, else its last observation
        last = events.groupby("stay_id")["time"].max() if len(events) else pd.Series(dtype=float)
        missing = stay_frame["prediction_time"].isna()
        if missing.any():
            stay_frame.loc[missing, "prediction_time"] = (
                stay_frame.loc[missing, "stay_id"].map(last).astype(float).fillna(0.0).clip(lower=0))
    static = pd.DataFrame({"stay_id": [s["stay_id"] for s in stays], "age": [s["age"] for s in stays],
                           "gender": [s["gender"] for s in stays]})
    labels, specs = None, []
    if task == DEATH:
        labels = pd.DataFrame({"stay_id": stay_frame["stay_id"], DEATH: _death_label(stays)})
        specs = [LabelSpec(DEATH, "binary", description="Patient.deceasedDateTime within the encounter's period.")]
    elif label_prefix is not None:
        name = f"condition_{label_prefix}"
        labels = pd.DataFrame({"stay_id": stay_frame["stay_id"],
                               name: stay_frame["patient_id"].isin(labelled).astype(float)})
        specs = [LabelSpec(name, "binary", description=f"Patient has a FHIR Condition coded {label_prefix}*.")]
    acc.check()
    meta = CohortMeta(name=Path(path).name, source="fhir", labels=specs,
                      feature_types={"age": "numeric", "gender": "categorical"})
    return Cohort(stay_frame, static=static, events=events if len(events) else None,
                  codes=codes if len(codes) else None, labels=labels, meta=meta, accounting=acc)


def _label_prefix(task: str | None) -> str | None:
    """The Condition code prefix of ``condition:<prefix>``; None for no task or ``in_hospital_death``."""
    if task is None or task == DEATH:
        return None
    kind, _, prefix = task.partition(":")
    if kind != "condition" or not prefix:
        raise SourceError(f"FHIR task {task!r} is not understood; use condition:<code prefix> (e.g. condition:E11) "
                          f"or {DEATH}.")
    return prefix


def _death_label(stays: list[dict]) -> list[float]:
    """1 when the patient's deceasedDateTime falls in the encounter (start to end, or open), 0 when not deceased or
    deceased at another time, missing when deceasedBoolean is true without a date."""
    out = []
    for s in stays:
        died, flag = s["deceased_at"], s["deceased_flag"]
        if died is None:
            out.append(np.nan if flag else 0.0)
        else:
            out.append(float(s["start"] <= died and (s["end"] is None or died <= s["end"])))
    return out


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SourceError(f"FHIR path {path} does not exist; pass a folder of .json bundles / .ndjson files.")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".ndjson") and p.is_file())
    if not files:
        raise SourceError(f"{path} holds no .json or .ndjson FHIR files.")
    return files


def _read_all(path: Path, acc: RowAccounting, progress: bool) -> dict[str, list[dict]]:
    """Every resource of every file, validated, as ``{"type": [{"res", "keys", "where"}]}`` (first of each id)."""
    out: dict[str, list[dict]] = {t: [] for t in READ_TYPES}
    seen: set[str] = set()
    for n, file in enumerate(_files(path)):
        for where, entry in _entries(file):
            res = entry["resource"]
            rtype = res.get("resourceType")
            table = rtype if rtype in READ_TYPES else OTHER
            acc.read(table, 1)
            keys = [f"{rtype}/{res['id']}"] if res.get("id") else []
            if entry.get("fullUrl"):
                keys.append(entry["fullUrl"])
            if not keys:
                raise SourceError(f"{where}: {rtype} has neither an id nor a fullUrl; it cannot be referenced.")
            if any(k in seen for k in keys):
                acc.drop(table, "duplicate resource", 1)
                continue
            seen.update(keys)
            if table == OTHER:
                acc.drop(OTHER, "resource type not read", 1)
                continue
            _validate(rtype, res, where)
            ident = res.get("id") or entry["fullUrl"].rsplit(":", 1)[-1].rsplit("/", 1)[-1]
            out[rtype].append({"res": res, "keys": keys, "where": where, "id": ident})
        if progress:
            log.info("FHIR file %d: %s", n + 1, display_path(file))
    return out


def _entries(file: Path):
    """(where, {"resource", "fullUrl"}) for every resource of a bundle, single resource or NDJSON file."""
    if file.suffix == ".ndjson":
        for i, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                res = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{file}, line {i}: not JSON ({exc}); NDJSON holds one resource per line.") from exc
            yield f"{file}, line {i}", {"resource": res}
        return
    try:
        doc = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{file} is not JSON ({exc}).") from exc
    if not isinstance(doc, dict) or "resourceType" not in doc:
        raise SourceError(f"{file} is not a FHIR resource or Bundle (no resourceType).")
    if doc["resourceType"] != "Bundle":
        yield str(file), {"resource": doc}
        return
    for i, entry in enumerate(doc.get("entry", [])):
        if "resource" not in entry:
            raise SourceError(f"{file}, entry {i}: has no resource.")
        yield f"{file}, entry {i}", entry


def _validate(rtype: str, res: dict, where: str) -> None:
    try:
        _model(rtype).model_validate(res)
    except ValueError as exc:  # pydantic's ValidationError names the field
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise SourceError(f"{where}: {rtype} {res.get('id', '')} is not valid FHIR R4: {detail}. "
                          "Fix the resource or leave it out.") from exc


def _ts(value: str | None) -> pd.Timestamp | None:
    if not value:
        return None
    t = pd.Timestamp(value)
    return t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t


def _patients(items: list[dict], acc: RowAccounting) -> dict[str, dict]:
    patients = {}
    for item in items:
        res = item["res"]
        rec = {"patient_id": item["id"], "gender": res.get("gender"), "birth": _ts(res.get("birthDate")),
               "deceased_at": _ts(res.get("deceasedDateTime")), "deceased_flag": bool(res.get("deceasedBoolean"))}
        for k in item["keys"]:
            patients[k] = rec
    return patients


def _ref(res: dict, field: str) -> str | None:
    value = res.get(field)
    return value.get("reference") if isinstance(value, dict) else None


def _encounters(items, patients, acc, hours) -> list[dict]:
    stays = []
    for item in items:
        res = item["res"]
        status = res.get("status")
        patient = patients.get(_ref(res, "subject") or "")
        start = _ts((res.get("period") or {}).get("start"))
        reason = (f"status {status}" if status in BAD_STATUS else "subject not found" if patient is None
                  else "no period.start" if start is None else None)
        if reason:
            acc.drop("Encounter", reason, 1)
            continue
        acc.use("Encounter", 1)
        end = _ts((res.get("period") or {}).get("end"))
        age = (start - patient["birth"]).days / 365.25 if patient["birth"] is not None else np.nan
        length = (end - start).total_seconds() / 3600 if end is not None else np.nan
        stays.append({"stay_id": item["id"], "keys": item["keys"], "patient_id": patient["patient_id"],
                      "start": start, "end": end, "prediction_time": float(hours) if hours is not None else length,
                      "care_unit": ((res.get("class") or {}).get("code") or UNKNOWN),
                      "sex": sex_group(pd.Series([patient["gender"] or ""]))[0],
                      "age_group": age_group(pd.Series([age]))[0], "age": age,
                      "gender": patient["gender"] or None, "deceased_at": patient["deceased_at"],
                      "deceased_flag": patient["deceased_flag"]})
    return stays


def _stay_of(res, t, patient, stays, enc_by_key):
    """The stay of an Observation: its encounter, else the patient's encounter holding ``t``; or a drop reason."""
    ref = _ref(res, "encounter")
    if ref:
        return (enc_by_key[ref], None) if ref in enc_by_key else (None, "encounter not read")
    for s in stays:
        if s["patient_id"] == patient["patient_id"] and s["start"] <= t and (s["end"] is None or t <= s["end"]):
            return s, None
    return None, "outside every encounter of the patient"


def _observations(items, patients, stays, enc_by_key, acc) -> pd.DataFrame:
    rows = []
    for item in items:
        res = item["res"]
        status = res.get("status")
        patient = patients.get(_ref(res, "subject") or "")
        t = _ts(res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start") or res.get("issued"))
        reason = (f"status {status}" if status in BAD_STATUS else "subject not found" if patient is None
                  else "no effective time" if t is None else None)
        stay = None
        if reason is None:
            stay, reason = _stay_of(res, t, patient, stays, enc_by_key)
        values = []
        if reason is None:
            parts = [res] + list(res.get("component") or [])
            found = [(p.get("code") or {}, p["valueQuantity"]) for p in parts
                     if isinstance(p.get("valueQuantity"), dict) and p["valueQuantity"].get("value") is not None]
            values = [v for v in (_value(code, q) for code, q in found) if isinstance(v, tuple)]
            if not values:
                why = {_value(code, q) for code, q in found}
                reason = ("no numeric value" if not found else "no LOINC code" if "no LOINC code" in why
                          else "unit not convertible")
        if reason:
            acc.drop("Observation", reason, 1)
            continue
        acc.use("Observation", 1)
        hours = (t - stay["start"]).total_seconds() / 3600
        rows += [(stay["stay_id"], hours, var, val) for var, val in values]
    return pd.DataFrame(rows, columns=["stay_id", "time", "variable", "value"])


def _value(code: dict, quantity: dict):
    """(variable, canonical value) of one coded quantity, or the reason it cannot be read."""
    loinc = [c.get("code") for c in code.get("coding", []) if c.get("system") == LOINC and c.get("code")]
    if not loinc:
        return "no LOINC code"
    value = float(quantity["value"])
    mapped = [CODE_MAP[c] for c in loinc if c in CODE_MAP]
    if not mapped:
        return f"LOINC/{loinc[0]}", value
    unit = quantity.get("code") or quantity.get("unit")
    if unit not in mapped[0].units:
        return "unit not convertible"
    factor, offset = mapped[0].units[unit]
    return mapped[0].variable, value * factor + offset


def _conditions(items, patients, stays, enc_by_key, acc, label_prefix) -> tuple[pd.DataFrame, set[str]]:
    rows, labelled = [], set()
    by_patient: dict[str, list[dict]] = {}
    for s in stays:
        by_patient.setdefault(s["patient_id"], []).append(s)
    for item in items:
        res = item["res"]
        patient = patients.get(_ref(res, "subject") or "")
        status = ((res.get("verificationStatus") or {}).get("coding") or [{}])[0].get("code")
        coding = [c for c in (res.get("code") or {}).get("coding", []) if c.get("code")]
        ref = _ref(res, "encounter")
        reason = (f"status {status}" if status in BAD_STATUS else "subject not found" if patient is None
                  else "no coded condition" if not coding else "encounter not read" if ref and ref not in enc_by_key
                  else "no encounter" if not by_patient.get(patient["patient_id"]) else None)
        if reason:
            acc.drop("Condition", reason, 1)
            continue
        acc.use("Condition", 1)
        system = SYSTEMS.get(coding[0].get("system", ""), coding[0].get("system", "unknown"))
        code = coding[0]["code"]
        if label_prefix is not None and code.startswith(label_prefix):
            labelled.add(patient["patient_id"])
            continue
        t = _ts(res.get("onsetDateTime") or (res.get("onsetPeriod") or {}).get("start") or res.get("recordedDate"))
        for s in [enc_by_key[ref]] if ref else by_patient[patient["patient_id"]]:
            hours = 0.0 if t is None else (t - s["start"]).total_seconds() / 3600
            rows.append((s["stay_id"], hours, system, code))
    return pd.DataFrame(rows, columns=["stay_id", "time", "system", "code"]), labelled
