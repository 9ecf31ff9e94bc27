"""MEDS: export a cohort, validate it with the meds schemas, read it back; read meds-testing-helpers' sample."""

import json

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from meds_testing_helpers.dataset import MEDSDataset
from meds_testing_helpers.static_sample_data import exported_yamls
from typer.testing import CliRunner

from healthfusion.cli.main import app
from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import get_exporter, get_source
from healthfusion.data.sources.meds import build
from healthfusion.data.sources.meds_export import export_meds
from healthfusion.data.splits import predefined_split
from tests.conftest import make_tiny_cohort

runner = CliRunner()


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys).reset_index(drop=True)


def assert_same_cohort(a: Cohort, b: Cohort) -> None:
    """Same stays, static features, events (float32 values), codes, notes and labels."""
    cols = sorted(a.stays.columns)
    pd.testing.assert_frame_equal(_sorted(a.stays[cols], ["stay_id"]), _sorted(b.stays[cols], ["stay_id"]),
                                  check_dtype=False)
    if a.static is not None:
        cols = list(a.static.columns)
        pd.testing.assert_frame_equal(_sorted(a.static, ["stay_id"]), _sorted(b.static[cols], ["stay_id"]),
                                      check_dtype=False, rtol=1e-6)
    ea, eb = (_sorted(c.events, ["stay_id", "time", "variable", "value"]) for c in (a, b))
    assert len(ea) == len(eb)
    assert (ea["stay_id"] == eb["stay_id"]).all() and (ea["variable"] == eb["variable"]).all()
    np.testing.assert_allclose(eb["time"], ea["time"], atol=1e-6)  # microsecond times
    np.testing.assert_allclose(eb["value"], ea["value"], rtol=1e-6)  # MEDS stores float32
    for table, keys in (("codes", ["stay_id", "time", "system", "code"]), ("notes", ["stay_id", "time", "text"])):
        ta = getattr(a, table)
        if ta is None:
            assert getattr(b, table) is None
            continue
        pd.testing.assert_frame_equal(_sorted(ta[keys], keys), _sorted(getattr(b, table)[keys], keys),
                                      check_dtype=False, atol=1e-6)
    assert [s.to_dict() for s in a.meta.labels] == [s.to_dict() for s in b.meta.labels]
    assert a.meta.derived == b.meta.derived
    for spec in a.meta.labels:
        la, lb = (c.labels.set_index("stay_id")[spec.name].sort_index() for c in (a, b))
        if spec.kind in ("binary", "regression"):
            np.testing.assert_allclose(lb.to_numpy(float), la.to_numpy(float), rtol=1e-6)  # float32 in MEDS
        else:
            assert la.astype(str).tolist() == lb.astype(str).tolist()


def test_export_passes_the_meds_validators_and_reads_back(tmp_path):
    cohort = make_tiny_cohort()
    summary = export_meds(cohort, tmp_path / "m")
    assert summary["stays"] == 12 and summary["subjects"] == 6
    assert summary["left_out"] == {"image rows": 11}  # MEDS has no image modality: reported, not dropped silently
    shards = sorted((tmp_path / "m" / "data").rglob("*.parquet"))
    assert {p.parent.name for p in shards} <= {"train", "tuning", "held_out"}
    total = 0
    for shard in shards:  # the meds package's own validators, straight on the files
        table = pq.read_table(shard)
        meds.DataSchema.validate(table)
        frame = table.to_pandas()
        assert frame["subject_id"].is_monotonic_increasing  # contiguous subjects, sorted by time within each
        assert (frame.groupby("subject_id")["time"].apply(lambda t: t.is_monotonic_increasing)).all()
        total += len(frame)
    assert total == summary["data_rows"]
    for label, rows in summary["labels"].items():
        table = pq.read_table(tmp_path / "m" / "task_labels" / label / "0.parquet")
        meds.LabelSchema.validate(table)
        assert table.num_rows == rows == 12
    splits = pq.read_table(tmp_path / "m" / meds.subject_splits_filepath)
    meds.SubjectSplitSchema.validate(splits)
    assert splits.num_rows == 6 and set(splits["split"].to_pylist()) <= {"train", "tuning", "held_out"}
    meds.CodeMetadataSchema.validate(pq.read_table(tmp_path / "m" / meds.code_metadata_filepath))
    dataset = json.loads((tmp_path / "m" / meds.dataset_metadata_filepath).read_text())
    assert dataset["raw_source_id_columns"] == ["stay_id", "patient_id"] and dataset["dataset_name"] == "tiny"

    back = get_source("meds")(tmp_path / "m")
    back.accounting.check()
    assert back.accounting.tables["data/*.parquet"].read == total == back.accounting.tables["data/*.parquet"].used
    assert_same_cohort(cohort, back)
    assert back.images is None
    # each stay carries its subject's MEDS split, which `split: predefined` maps to train/val/test
    split_of = dict(zip(splits["subject_id"].to_pylist(), splits["split"].to_pylist(), strict=True))
    patient_split = back.stays.groupby("patient_id")["split"].agg(set)
    assert all(len(v) == 1 for v in patient_split)
    assert sorted(back.stays["split"].value_counts().tolist()) == sorted(
        pd.Series(split_of).value_counts().mul(2).tolist())  # two stays per patient in the tiny cohort
    assert set(predefined_split(back.stays)) <= {"train", "val", "test"}


def test_multiple_stays_of_one_patient_do_not_overlap(tmp_path):
    cohort = make_tiny_cohort()
    export_meds(cohort, tmp_path / "m")
    data = pd.concat(pq.read_table(p).to_pandas() for p in (tmp_path / "m" / "data").rglob("*.parquet"))
    spans = data.groupby(["subject_id", "stay_id"])["time"].agg(["min", "max"]).sort_values("min")
    for _, stays in spans.groupby(level="subject_id"):
        assert (stays["min"].iloc[1:].to_numpy() > stays["max"].iloc[:-1].to_numpy()).all()


@pytest.fixture
def sample_meds(tmp_path):
    """The static sample dataset meds-testing-helpers ships (6 subjects, 21 label rows of one boolean task)."""
    root = tmp_path / "sample"
    MEDSDataset.from_yaml(exported_yamls["SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS"]).write(root)
    return root


def test_sample_dataset_one_stay_per_label_row(sample_meds):
    cohort = build(sample_meds, task="boolean_value_task")
    assert len(cohort) == 21
    acc = cohort.accounting.tables
    assert acc["data/*.parquet"].read == 62 and acc["data/*.parquet"].used == 62
    assert acc["labels/boolean_value_task"].read == 21 == acc["labels/boolean_value_task"].used
    stay = "239684@2010-05-11T18:00:00"
    row = cohort.stays.set_index("stay_id").loc[stay]
    assert row["patient_id"] == "239684"
    assert row["prediction_time"] == pytest.approx((18 * 60 - (17 * 60 + 41 + 51 / 60)) / 60)  # anchor 17:41:51
    static = cohort.static.set_index("stay_id").loc[stay]
    assert static["EYE_COLOR"] == "BROWN" and static["HEIGHT"] == pytest.approx(175.271115, rel=1e-6)
    assert static["age"] == pytest.approx((pd.Timestamp("2010-05-11 17:41:51") - pd.Timestamp("1980-12-28"))
                                          / pd.Timedelta(days=365.25))
    assert cohort.meta.feature_types["EYE_COLOR"] == "categorical" and cohort.meta.feature_types["HEIGHT"] == "numeric"
    hr = cohort.events[(cohort.events["stay_id"] == stay) & (cohort.events["variable"] == "HR")]
    assert len(hr) == 4 and hr["time"].min() == 0.0
    observable = cohort.observable("events")
    assert len(observable[(observable["stay_id"] == stay) & (observable["variable"] == "HR")]) == 2  # 17:41, 17:48
    codes = cohort.codes[cohort.codes["stay_id"] == stay]
    assert set(zip(codes["system"], codes["code"], strict=True)) == {("ADMISSION", "CARDIAC"), ("meds", "DISCHARGE")}
    assert cohort.meta.label("boolean_value_task").kind == "binary"
    assert cohort.label("boolean_value_task").sum() == 12


def test_explicit_label_shard_and_accounting_of_unlabelled_rows(sample_meds, tmp_path):
    shard = sorted((sample_meds / "task_labels" / "boolean_value_task").glob("*A*"))[0]
    table = pq.read_table(shard).drop_columns(["integer_value", "float_value", "categorical_value"])
    early = pa.table({"subject_id": pa.array([239684], pa.int64()),
                      "prediction_time": pa.array([pd.Timestamp("2001-01-01")], pa.timestamp("us")),
                      "boolean_value": [True]})
    pq.write_table(pa.concat_tables([table, early]), tmp_path / "died.parquet")
    cohort = build(sample_meds, labels=tmp_path / "died.parquet")
    assert cohort.meta.labels[0].name == "died" and len(cohort) == 10  # subjects 239684, 1195293, 68729
    acc = cohort.accounting.tables
    assert acc["labels/died"].dropped == {"no anchor event at or before the prediction time": 1}
    data = acc["data/*.parquet"]
    assert data.dropped == {"subject has no label row": 7 + 7 + 11} and data.used == 62 - 25
    cohort.accounting.check()


def test_bad_inputs_name_the_file(sample_meds, tmp_path):
    with pytest.raises(SourceError, match="task 'nope'.*boolean_value_task"):
        build(sample_meds, task="nope")
    shard = next((sample_meds / "data").rglob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.drop_columns(["code"]), shard)
    with pytest.raises(SourceError, match=str(shard.name)):
        build(sample_meds)
    with pytest.raises(SourceError, match="no data/ folder"):
        build(tmp_path)
    (tmp_path / "m" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"subject_id": pa.array([1], pa.int64()), "time": pa.array([None], pa.timestamp("us")),
                             "code": ["X"]}), tmp_path / "m" / "data" / "0.parquet")
    with pytest.raises(SourceError, match="labels=PATH"):
        build(tmp_path / "m")
    with pytest.raises(SourceError, match="Did you mean 'meds'"):
        get_exporter("med")


def test_cli_export_then_build_from_meds(tmp_path):
    make_tiny_cohort().save(tmp_path / "cohort")
    result = runner.invoke(app, ["cohort", "export", str(tmp_path / "cohort"), "--format", "meds",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "12 stays of 6 subjects" in result.output and "11 image rows" in result.output
    again = runner.invoke(app, ["cohort", "export", str(tmp_path / "cohort"), "--format", "meds",
                                "--out", str(tmp_path / "m")])
    assert again.exit_code == 2 and "not empty" in again.output
    built = runner.invoke(app, ["cohort", "build", "--source", "meds", "--path", str(tmp_path / "m"),
                                "--task", "death", "--out", str(tmp_path / "back")])
    assert built.exit_code == 0, built.output
    labelled = runner.invoke(app, ["cohort", "build", "--source", "meds", "--path", str(tmp_path / "m"),
                                   "--option", f"labels={tmp_path / 'm' / 'task_labels' / 'los'}",
                                   "--out", str(tmp_path / "los")])
    assert labelled.exit_code == 0, labelled.output
    assert [s.name for s in Cohort.load(tmp_path / "los").meta.labels] == ["los"]
    back = Cohort.load(tmp_path / "back")
    assert len(back) == 12 and [s.name for s in back.meta.labels] == ["death"]
    assert back.label("death").tolist() == make_tiny_cohort().labels.set_index("stay_id")["death"].reindex(
        back.stay_ids).tolist()


@pytest.mark.realdata
@pytest.mark.slow
def test_physionet2012_round_trip(shared_dataset, tmp_path):
    """Set A through MEDS and back (600 stays): the same stays, events and labels."""
    from healthfusion.data.sources.physionet2012 import build as build_physionet

    full = build_physionet(shared_dataset("physionet2012") / "set-a.tar.gz")
    cohort = full.subset(full.stay_ids[:600])
    summary = export_meds(cohort, tmp_path / "m")
    assert summary["left_out"] == {} and summary["labels"]["in_hospital_death"] == 600
    back = build(tmp_path / "m")
    back.accounting.check()
    assert back.accounting.tables["data/*.parquet"].used == summary["data_rows"]
    assert_same_cohort(cohort, back)
    assert back.label("in_hospital_death").sum() == cohort.label("in_hospital_death").sum()


def test_a_cohort_without_labels_round_trips_as_stays_to_predict_on(tmp_path):
    cohort = make_tiny_cohort()
    unlabelled = Cohort(cohort.stays, static=cohort.static, events=cohort.events)
    summary = export_meds(unlabelled, tmp_path / "m")
    assert summary["labels"] == {"prediction_times": 12}
    meds.LabelSchema.validate(pq.read_table(tmp_path / "m" / "task_labels" / "prediction_times" / "0.parquet"))
    back = build(tmp_path / "m")
    assert back.labels is None and back.meta.labels == [] and len(back) == 12
    assert back.stays.set_index("stay_id")["prediction_time"].eq(24.0).all()
    assert len(back.events) == len(cohort.events)


def test_generic_dataset_two_admissions_of_one_subject(tmp_path):
    """No stay_id column: each label row's stay starts at the latest ADMISSION before it and ends at the next."""
    t = pd.Timestamp
    rows = [(7, None, "HEIGHT", 170.0), (7, t("2020-01-01 00:00"), "LAB", 1.0),  # before any admission
            (7, t("2020-01-02 00:00"), "ADMISSION//ICU", None), (7, t("2020-01-02 02:00"), "HR", 80.0),
            (7, t("2020-02-01 00:00"), "ADMISSION//ICU", None), (7, t("2020-02-01 03:00"), "HR", 90.0),
            (7, t("2020-02-01 05:00"), "ICD10//I10", None), (8, t("2020-01-01 00:00"), "ADMISSION", None)]
    data = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                     "code": [r[2] for r in rows], "numeric_value": pa.array([r[3] for r in rows], pa.float32())})
    (tmp_path / "data").mkdir()
    pq.write_table(data, tmp_path / "data" / "0.parquet")
    labels = pa.table({"subject_id": pa.array([7, 7], pa.int64()),
                       "prediction_time": pa.array([t("2020-01-02 12:00"), t("2020-02-01 12:00")], pa.timestamp("us")),
                       "float_value": pa.array([1.5, 2.5], pa.float32())})
    pq.write_table(labels, tmp_path / "los.parquet")
    cohort = build(tmp_path, labels=tmp_path / "los.parquet")
    first, second = "7@2020-01-02T12:00:00", "7@2020-02-01T12:00:00"
    assert sorted(cohort.stay_ids) == [first, second]
    ev = cohort.events.set_index("stay_id")
    assert ev.loc[first, "value"] == 80.0 and ev.loc[first, "time"] == 2.0
    assert ev.loc[second, "value"] == 90.0 and ev.loc[second, "time"] == 3.0
    codes = sorted(tuple(r) for r in cohort.codes[["stay_id", "time", "system", "code"]].itertuples(index=False))
    assert codes == [(first, 0.0, "ADMISSION", "ICU"), (second, 0.0, "ADMISSION", "ICU"),
                     (second, 5.0, "ICD10", "I10")]
    assert cohort.static.set_index("stay_id")["HEIGHT"].tolist() == [170.0, 170.0]
    assert cohort.stays.set_index("stay_id")["prediction_time"].tolist() == [12.0, 12.0]
    assert cohort.meta.label("los").kind == "regression"
    acc = cohort.accounting.tables["data/*.parquet"]
    assert acc.dropped == {"before the subject's first anchor": 1, "subject has no label row": 1} and acc.used == 6
