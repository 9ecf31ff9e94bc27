"""Column types of the raw tables the toolkit knows (MIMIC-IV v2.x ``hosp/`` and ``icu/``, eICU-CRD), used
when they are converted to Parquet (:func:`~healthfusion.data.sources.convert.convert_to_parquet`).

Identifier and code columns are text (``"str"``) so that nothing is lost: an NDC such as ``00002821501``, a
DRG code, an ICD code or a provider id keeps its leading zeros and letters. Times are ``"time"`` (ISO 8601
timestamps), measured values ``"float"``, counts and offsets ``"int"``. A column of a known table that is not
listed here, and every column of another table, is typed from all of its values, except that a column whose
name marks an identifier or a code (:func:`is_code_column`) stays text.
"""

from __future__ import annotations

import re

_MIMIC_IDS = {"subject_id": "int", "hadm_id": "int", "stay_id": "int"}
_CHART_LIKE = {**_MIMIC_IDS, "caregiver_id": "int", "charttime": "time", "storetime": "time", "itemid": "int"}

# table name (file name without its suffixes, lower case) -> column -> kind
KNOWN_TABLES: dict[str, dict[str, str]] = {
    # MIMIC-IV hosp/
    "patients": {"subject_id": "int", "gender": "str", "anchor_age": "int", "anchor_year": "int",
                 "anchor_year_group": "str", "dod": "time"},
    "admissions": {"subject_id": "int", "hadm_id": "int", "admittime": "time", "dischtime": "time",
                   "deathtime": "time", "admission_type": "str", "admit_provider_id": "str",
                   "admission_location": "str", "discharge_location": "str", "insurance": "str", "language": "str",
                   "marital_status": "str", "race": "str", "ethnicity": "str", "edregtime": "time",
                   "edouttime": "time", "hospital_expire_flag": "int"},
    "diagnoses_icd": {"subject_id": "int", "hadm_id": "int", "seq_num": "int", "icd_code": "str",
                      "icd_version": "int"},
    "procedures_icd": {"subject_id": "int", "hadm_id": "int", "seq_num": "int", "chartdate": "time",
                       "icd_code": "str", "icd_version": "int"},
    "drgcodes": {"subject_id": "int", "hadm_id": "int", "drg_type": "str", "drg_code": "str", "description": "str",
                 "drg_severity": "int", "drg_mortality": "int"},
    "prescriptions": {"subject_id": "int", "hadm_id": "int", "pharmacy_id": "int", "poe_id": "str", "poe_seq": "int",
                      "order_provider_id": "str", "starttime": "time", "stoptime": "time", "drug_type": "str",
                      "drug": "str", "formulary_drug_cd": "str", "gsn": "str", "ndc": "str", "prod_strength": "str",
                      "form_rx": "str", "dose_val_rx": "str", "dose_unit_rx": "str", "form_val_disp": "str",
                      "form_unit_disp": "str", "doses_per_24_hrs": "float", "route": "str"},
    "hcpcsevents": {"subject_id": "int", "hadm_id": "int", "chartdate": "time", "hcpcs_cd": "str", "seq_num": "int",
                    "short_description": "str"},
    "d_hcpcs": {"code": "str", "category": "str", "long_description": "str", "short_description": "str"},
    "d_icd_diagnoses": {"icd_code": "str", "icd_version": "int", "long_title": "str"},
    "d_icd_procedures": {"icd_code": "str", "icd_version": "int", "long_title": "str"},
    "d_labitems": {"itemid": "int", "label": "str", "fluid": "str", "category": "str"},
    "labevents": {"labevent_id": "int", "subject_id": "int", "hadm_id": "int", "specimen_id": "int", "itemid": "int",
                  "order_provider_id": "str", "charttime": "time", "storetime": "time", "value": "str",
                  "valuenum": "float", "valueuom": "str", "ref_range_lower": "float", "ref_range_upper": "float",
                  "flag": "str", "priority": "str", "comments": "str"},
    "transfers": {"subject_id": "int", "hadm_id": "int", "transfer_id": "int", "eventtype": "str", "careunit": "str",
                  "intime": "time", "outtime": "time"},
    "services": {"subject_id": "int", "hadm_id": "int", "transfertime": "time", "prev_service": "str",
                 "curr_service": "str"},
    # MIMIC-IV icu/
    "icustays": {**_MIMIC_IDS, "first_careunit": "str", "last_careunit": "str", "intime": "time", "outtime": "time",
                 "los": "float"},
    "d_items": {"itemid": "int", "label": "str", "abbreviation": "str", "linksto": "str", "category": "str",
                "unitname": "str", "param_type": "str", "lownormalvalue": "float", "highnormalvalue": "float"},
    "chartevents": {**_CHART_LIKE, "value": "str", "valuenum": "float", "valueuom": "str", "warning": "int"},
    "outputevents": {**_CHART_LIKE, "value": "float", "valueuom": "str"},
    "datetimeevents": {**_CHART_LIKE, "value": "time", "valueuom": "str", "warning": "int"},
    # eICU-CRD
    "patient": {"patientunitstayid": "int", "patienthealthsystemstayid": "int", "uniquepid": "str",
                "hospitalid": "int", "wardid": "int", "age": "str", "gender": "str", "ethnicity": "str",
                "hospitaladmitoffset": "int", "hospitaldischargeoffset": "int", "unitdischargeoffset": "int",
                "admissionheight": "float", "admissionweight": "float", "dischargeweight": "float"},
    "diagnosis": {"diagnosisid": "int", "patientunitstayid": "int", "diagnosisoffset": "int",
                  "diagnosisstring": "str", "icd9code": "str", "diagnosispriority": "str", "activeupondischarge": "str"},
    "lab": {"labid": "int", "patientunitstayid": "int", "labresultoffset": "int", "labtypeid": "int",
            "labname": "str", "labresult": "float", "labresulttext": "str", "labmeasurenamesystem": "str",
            "labmeasurenameinterface": "str", "labresultrevisedoffset": "int"},
    "vitalperiodic": {"vitalperiodicid": "int", "patientunitstayid": "int", "observationoffset": "int",
                      "temperature": "float", "sao2": "float", "heartrate": "float", "respiration": "float",
                      "cvp": "float", "etco2": "float", "systemicsystolic": "float", "systemicdiastolic": "float",
                      "systemicmean": "float", "pasystolic": "float", "padiastolic": "float", "pamean": "float",
                      "st1": "float", "st2": "float", "st3": "float", "icp": "float"},
    "vitalaperiodic": {"vitalaperiodicid": "int", "patientunitstayid": "int", "observationoffset": "int",
                       "noninvasivesystolic": "float", "noninvasivediastolic": "float", "noninvasivemean": "float",
                       "paop": "float", "cardiacoutput": "float", "cardiacinput": "float", "svr": "float",
                       "svri": "float", "pvr": "float", "pvri": "float"},
    "intakeoutput": {"intakeoutputid": "int", "patientunitstayid": "int", "intakeoutputoffset": "int",
                     "intaketotal": "float", "outputtotal": "float", "dialysistotal": "float", "nettotal": "float",
                     "intakeoutputentryoffset": "int", "cellpath": "str", "celllabel": "str",
                     "cellvaluenumeric": "float", "cellvaluetext": "str"},
}
_CODE_NAME = re.compile(r"(^|_)(id|ids|cd|ndc|gsn|drg|icd\d*|hcpcs|zip)(_|$)|code$|id$")


def table_name(file_name: str) -> str:
    """``labevents.csv.gz`` -> ``labevents`` (lower case, suffixes removed)."""
    return file_name.lower().split(".")[0]


def is_code_column(name: str) -> bool:
    """True for a column name that marks an identifier or a code (``patient_id``, ``icd9code``, ``ndc``,
    ``drg_code``, ``hcpcs_cd``, ``uniquepid``): such a column is kept as text when its type is not declared."""
    return bool(_CODE_NAME.search(name.lower()))


def known_kinds(file_name: str) -> dict[str, str]:
    """Declared column kinds of the table stored in ``file_name`` (empty for an unknown table)."""
    return KNOWN_TABLES.get(table_name(file_name), {})
