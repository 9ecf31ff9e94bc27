"""Partitioned builds without Ray: patient groups, the merged row accounting, and a MIMIC-IV cohort built in
partitions (in this process) equal to the single-process build."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.accounting import AccountingError, RowAccounting, combine_partitions
from healthfusion.data.errors import SourceError
from healthfusion.data.partition import Sequential, split_by_patient

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "mimic_scale.py"


def test_split_by_patient_keeps_patients_whole_and_balances_stays():
    stays = pd.DataFrame({"stay": range(10), "patient_id": ["a", "a", "a", "b", "c", "c", "d", "e", "f", "g"]})
    groups = split_by_patient(stays, 3)
    assert len(groups) == 3
    assert sorted(pd.concat(groups)["stay"]) == list(range(10))
    owners = [set(g["patient_id"]) for g in groups]
    assert all(not (owners[i] & owners[j]) for i in range(3) for j in range(i + 1, 3))
    assert sorted(len(g) for g in groups) == [3, 3, 4]
    assert all(g["stay"].is_monotonic_increasing for g in groups)
    assert len(split_by_patient(stays.head(3), 4)) == 1  # one patient: one group
    with pytest.raises(ValueError, match="n >= 1"):
        split_by_patient(stays, 0)


def _part(read, used, **dropped):
    acc = RowAccounting()
    acc.read("t", read)
    acc.use("t", used)
    for reason, n in dropped.items():
        acc.drop("t", reason.replace("_", " "), n)
    return acc


def test_combine_partitions_counts_every_row_once():
    # 100 rows: 30 unmapped (seen by both parts), 20 of stays in no part, 30 of part 0's stays, 20 of part 1's
    a = _part(100, 25, unmapped_item=30, stay_not_in_cohort=40, missing_value=5)
    b = _part(100, 18, unmapped_item=30, stay_not_in_cohort=50, missing_value=2)
    merged = combine_partitions([a, b]).to_dict()["t"]
    assert merged == {"read": 100, "used": 43,
                      "dropped": {"unmapped item": 30, "missing value": 7, "stay not in cohort": 20}}


def test_combine_partitions_refuses_overlapping_or_different_reads():
    a = _part(10, 8, unmapped_item=2)
    with pytest.raises(AccountingError, match="overlap"):
        combine_partitions([a, _part(10, 8, unmapped_item=2)])
    with pytest.raises(AccountingError, match="disagree"):
        combine_partitions([a, _part(12, 8, unmapped_item=4)])


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(str)
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def assert_same_cohort(a, b) -> None:
    """Same tables (row order aside) and the same row accounting."""
    assert a.accounting.to_dict() == b.accounting.to_dict()
    for name in ("stays", "static", "events", "codes", "labels"):
        pd.testing.assert_frame_equal(_normalised(getattr(a, name)), _normalised(getattr(b, name)),
                                      check_dtype=False, obj=name)


def mimic_with_chartevents(demo: Path, root: Path, rows: int = 20000) -> Path:
    """The MIMIC-IV demo with a generated chartevents table (the benchmark's generator, 2 copies of the demo's
    stays) and the demo's own labevents and outputevents linked in: every event-table path of the reader."""
    spec = importlib.util.spec_from_file_location("mimic_scale", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.make_database(demo, root, rows, copies=2)
    (root / "hosp" / "labevents.csv.gz").unlink()
    (root / "hosp" / "labevents.csv.gz").symlink_to(demo / "hosp" / "labevents.csv.gz")
    (root / "icu" / "outputevents.csv.gz").symlink_to(demo / "icu" / "outputevents.csv.gz")
    return root


@pytest.mark.realdata
def test_mimic4_partitioned_build_equals_single_process(shared_dataset, tmp_path):
    from healthfusion.data.sources.mimic4 import build

    root = mimic_with_chartevents(shared_dataset("mimic_iv_demo"), tmp_path / "db")
    single = build(root, out=tmp_path / "single")
    parted = build(root, out=tmp_path / "parted", partitions=Sequential(3))
    assert_same_cohort(single, parted)
    tables = single.accounting.to_dict()
    assert {"labevents", "chartevents", "outputevents"} <= set(tables)
    assert tables["chartevents"]["used"] > 0 and tables["labevents"]["used"] > 0
    assert np.isin(["HR", "MAP", "Urine"], single.events["variable"].astype(str).unique()).all()


def test_additive_tables_sum_and_may_be_absent_from_a_partition():
    a, b = _part(100, 60, stay_not_in_cohort=40), _part(100, 30, stay_not_in_cohort=70)
    a.read("t values", 50)
    a.use("t values", 48)
    a.drop("t values", "implausible value", 2)
    merged = combine_partitions([a, b], shared=(), additive=("t values",)).to_dict()
    assert merged["t values"] == {"read": 50, "used": 48, "dropped": {"implausible value": 2}}
    assert merged["t"] == {"read": 100, "used": 90, "dropped": {"stay not in cohort": 10}}


@pytest.mark.realdata
def test_eicu_partitioned_build_equals_single_process(shared_dataset):
    from healthfusion.data.sources.eicu import build

    demo = shared_dataset("eicu_demo")
    single = build(demo)
    parted = build(demo, partitions=Sequential(3))
    assert_same_cohort(single, parted)
    tables = single.accounting.to_dict()
    assert {"vitalAperiodic", "vitalAperiodic values", "intakeOutput"} <= set(tables)
    assert tables["intakeOutput"]["dropped"]["unmapped item"] > 0


def test_split_row_groups_covers_every_row_group_once_in_balanced_ranges(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from healthfusion.data.partition import split_row_groups

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": np.arange(1000)}), path, row_group_size=90)  # 12 row groups
    for n in (1, 2, 3, 5, 20):
        ranges = split_row_groups(path, n)
        assert len(ranges) == n
        assert [g for r in ranges for g in r] == list(range(12))
    assert [len(r) for r in split_row_groups(path, 3)] == [4, 4, 4]
    with pytest.raises(ValueError, match="n >= 1"):
        split_row_groups(path, 0)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(SourceError, match="bad.parquet"):
        split_row_groups(tmp_path / "bad.parquet", 2)


def test_stream_table_reads_a_range_of_row_groups_with_file_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from healthfusion.data.sources.io import stream_table

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": np.arange(100)}), path, row_group_size=30)  # groups of 30, 30, 30, 10
    part = pa.concat_tables(stream_table(path, {"a": "int"}, range(1, 3)))
    assert part["a"].to_pylist() == list(range(30, 90))
    assert part["_row"].to_pylist() == list(range(30, 90))
    assert list(stream_table(path, {"a": "int"}, range(4, 4))) == []
    with pytest.raises(ValueError, match="contiguous"):
        list(stream_table(path, {"a": "int"}, range(3, 6)))


class _Recording(Sequential):
    """Sequential partitions that keep the arguments of each task."""

    def map(self, function, arguments):
        self.calls = (function.__name__, list(arguments))
        return super().map(function, arguments)


@pytest.mark.realdata
def test_mimic4_build_split_by_parquet_row_groups_equals_single_process(shared_dataset, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from healthfusion.data.sources import convert
    from healthfusion.data.sources.mimic4 import build

    csv = mimic_with_chartevents(shared_dataset("mimic_iv_demo"), tmp_path / "db")
    monkeypatch.setattr(convert, "ROW_GROUP_ROWS", 3000)  # many small row groups in every event table
    convert.convert_to_parquet(csv, tmp_path / "pq")
    root = tmp_path / "pq"
    chart = pq.ParquetFile(root / "icu" / "chartevents.parquet")
    assert chart.num_row_groups >= 4
    first_stays = [chart.read_row_group(g, columns=["stay_id"])["stay_id"] for g in range(chart.num_row_groups)]
    spanning = sum(a[-1].as_py() == b[0].as_py() for a, b in zip(first_stays[:-1], first_stays[1:], strict=True))
    assert spanning >= 3  # stays whose rows span row groups (and so workers)

    single = build(root, out=tmp_path / "single")
    recording = _Recording(3)
    parted = build(root, out=tmp_path / "parted", partitions=recording)
    assert_same_cohort(single, parted)
    name, tasks = recording.calls
    assert name == "partition_rows" and len(tasks) == 3
    for table in ("labevents", "chartevents", "outputevents"):
        groups = [g for task in tasks for g in task[-1][table]]
        assert groups == list(range(pq.ParquetFile(next((root).rglob(f"{table}.parquet"))).num_row_groups))
        assert all(len(task[-1][table]) > 0 for task in tasks)
    tables = single.accounting.to_dict()
    assert tables["chartevents"]["used"] > 0 and tables["labevents"]["used"] > 0
    assert tables["chartevents"]["read"] == chart.metadata.num_rows
