"""Hourly means computed by the table engine: against a plain pandas reference (means, chunks and row
accounting), and the MIMIC-IV reader against the benchmark's vectorized pandas build on a generated database."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import hourly

BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "mimic_scale.py"


ITEMS = pd.DataFrame({"variable": ["HR", "Temp"], "factor": [1.0, 5 / 9], "offset": [0.0, -32 * 5 / 9]},
                     index=pd.Index([220045, 223761], name="itemid"))


def _windows(n_stays: int) -> pd.DataFrame:
    return pd.DataFrame({"stay_key": 100 + np.arange(n_stays), "stay_id": [f"s{i}" for i in range(n_stays)],
                         "intime": pd.Timestamp("2150-01-01 00:00:00"), "start": -24.0, "end": 200.0})


def _random_rows(path: Path, rng, n: int, n_stays: int) -> pd.DataFrame:
    """Chartevents-shaped rows (some unmapped, unknown stays, missing, implausible, out of window)."""
    seconds = rng.integers(-30 * 3600, 210 * 3600, n)
    rows = pd.DataFrame({
        "stay_id": 100 + rng.integers(0, n_stays + 2, n), "itemid": rng.choice([220045, 223761, 220046], n),
        "charttime": (pd.Timestamp("2150-01-01") + pd.to_timedelta(seconds, unit="s")).astype(str),
        "valuenum": rng.normal(90, 15, n).round(1)})
    rows.loc[rng.random(n) < 0.01, "valuenum"] = np.nan
    rows.loc[rng.random(n) < 0.01, "charttime"] = None
    rows.loc[rng.random(n) < 0.01, "valuenum"] = 900.0
    rows.to_csv(path, index=False)
    return rows


def _reference(rows: pd.DataFrame, windows: pd.DataFrame, pred: float, items: pd.DataFrame = ITEMS,
               value: str = "valuenum") -> tuple[pd.DataFrame, dict]:
    """Hourly means and the accounting of chartevents-shaped ``rows`` (stay_id, itemid, charttime and the
    ``value`` column), written plainly in pandas, reason by reason."""
    dropped = {}
    df = rows.rename(columns={value: "valuenum"}).merge(items, left_on="itemid", right_index=True, how="left")
    for reason, bad in (
        ("unmapped item", lambda d: d["variable"].isna()),
        ("stay not in cohort", lambda d: ~d["stay_id"].isin(windows["stay_key"])),
        ("missing time", lambda d: d["charttime"].isna()),
        ("missing value", lambda d: d["valuenum"].isna()),
        ("implausible value", lambda d: ~d.apply(lambda r: _range(r["variable"])[0] <= r["value"]
                                                 <= _range(r["variable"])[1], axis=1)),
        ("outside stay window", lambda d: ~d["hours"].between(d["start"], d["end"])),
    ):
        if reason == "implausible value":
            df["value"] = df["valuenum"] * df["factor"] + df["offset"]
        if reason == "outside stay window":
            df = df.merge(windows, left_on="stay_id", right_on="stay_key", suffixes=("_raw", ""))
            df["hours"] = (pd.to_datetime(df["charttime"]) - df["intime"]) / pd.Timedelta(hours=1)
        mask = bad(df) if len(df) else pd.Series(dtype=bool)
        if mask.sum():
            dropped[reason] = int(mask.sum())
        df = df[~mask]
    rel = df["hours"] - pred
    df = df.assign(hour=np.floor(rel), offset=rel - np.floor(rel))
    means = df.groupby(["stay_id", "hour", "variable"]).agg(value=("value", "mean"), offset=("offset", "mean"))
    means = means.reset_index()
    events = pd.DataFrame({"stay_id": means["stay_id"], "time": pred + means["hour"] + means["offset"],
                           "variable": means["variable"], "value": means["value"]})
    acc = {"read": len(rows), "used": len(df), "dropped": dropped}
    return events.sort_values(["stay_id", "variable", "time"]).reset_index(drop=True), acc


def _range(variable: str) -> tuple[float, float]:
    from healthfusion.data.plausibility import PLAUSIBLE_RANGES

    return PLAUSIBLE_RANGES.get(variable, (-np.inf, np.inf, ""))[:2]


def _assert_same_events(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.astype({"stay_id": str, "variable": str}).sort_values(["stay_id", "variable", "time"])
    got = got.reset_index(drop=True)
    assert len(got) == len(want) > 0
    assert got["stay_id"].tolist() == want["stay_id"].tolist()
    assert got["variable"].tolist() == want["variable"].tolist()
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)
    np.testing.assert_allclose(got["time"], want["time"], rtol=0, atol=1e-9)
    assert (np.floor(got["time"] - 24.0) == np.floor(want["time"] - 24.0)).all()  # the same hour


@pytest.mark.parametrize("chunk_bins", [1 << 20, 7])
def test_hourly_means_and_accounting_equal_a_plain_pandas_reference(tmp_path, monkeypatch, chunk_bins):
    monkeypatch.setattr(hourly, "CHUNK_BINS", chunk_bins)
    rng = np.random.default_rng(0)
    rows = _random_rows(tmp_path / "chart.csv", rng, 6000, n_stays=30)
    acc = RowAccounting()
    parts = list(hourly.iter_hourly(tmp_path / "chart.csv", "chartevents", ("stay_id", "itemid", "charttime",
                                    "valuenum"), ITEMS, _windows(30), 24.0, acc))
    assert len(parts) > 1 or chunk_bins > 6000  # several chunks of whole stays when chunks are small
    stays = [set(p["stay_id"].dropna().astype(str)) for p in parts]
    assert all(not (a & b) for i, a in enumerate(stays) for b in stays[i + 1:])
    want, want_acc = _reference(rows, _windows(30), 24.0)
    assert acc.to_dict()["chartevents"] == want_acc and len(want_acc["dropped"]) == 6
    _assert_same_events(pd.concat(parts, ignore_index=True), want)


def test_hourly_sums_of_row_group_ranges_combine_to_the_means_of_one_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from healthfusion.data.partition import split_row_groups

    rng = np.random.default_rng(1)
    rows = _random_rows(tmp_path / "chart.csv", rng, 6000, n_stays=30)  # rows in random order: every stay
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / "chart.parquet",
                   row_group_size=500)  # spans many of the 12 row groups
    columns = ("stay_id", "itemid", "charttime", "valuenum")
    ranges = split_row_groups(tmp_path / "chart.parquet", 3)
    parts = [hourly.hourly_sums(tmp_path / "chart.parquet", columns, ITEMS, _windows(30), 24.0, row_groups=r)
             for r in ranges]
    assert [sum(p["n"].to_numpy()) for p in parts] == [500 * len(r) for r in ranges]  # each row in one part
    acc = RowAccounting()
    got = pd.concat(hourly.combine_hourly(parts, "chartevents", columns, ITEMS, _windows(30), 24.0, acc),
                    ignore_index=True)
    want, want_acc = _reference(rows, _windows(30), 24.0)
    assert acc.to_dict()["chartevents"] == want_acc
    _assert_same_events(got, want)


@pytest.mark.realdata
def test_hourly_means_of_the_demo_outputevents_equal_the_pandas_reference(shared_dataset):
    """The demo ships no chartevents; its outputevents (same layout: stay_id, itemid, charttime, value) go
    through the engine and through the plain pandas reference: the same events and the same accounting."""
    from healthfusion.data.sources.itemmap import mimic4_items
    from healthfusion.data.sources.mimic4 import _stays

    demo = shared_dataset("mimic_iv_demo")
    stays = _stays(demo, RowAccounting(), 24.0)
    windows = stays[["stay_key", "stay_id", "intime"]].assign(start=-24.0, end=stays["los_hours"])
    items = mimic4_items("outputevents")[["variable", "factor", "offset"]]
    path = demo / "icu" / "outputevents.csv.gz"
    acc = RowAccounting()
    got = pd.concat(hourly.iter_hourly(path, "outputevents", ("stay_id", "itemid", "charttime", "value"), items,
                                       windows, 24.0, acc), ignore_index=True)
    rows = pd.read_csv(path, usecols=["stay_id", "itemid", "charttime", "value"])
    want, want_acc = _reference(rows, windows, 24.0, items, "value")
    assert acc.to_dict()["outputevents"] == want_acc and want_acc["used"] > 1000
    _assert_same_events(got, want)


def test_a_table_with_no_usable_row_yields_nothing_but_counts_every_row(tmp_path):
    path = tmp_path / "chart.csv"
    pd.DataFrame({"stay_id": [100, 999], "itemid": [220046, 220045], "charttime": "2150-01-01 01:00:00",
                  "valuenum": 80.0}).to_csv(path, index=False)
    acc = RowAccounting()
    parts = list(hourly.iter_hourly(path, "t", ("stay_id", "itemid", "charttime", "valuenum"), ITEMS,
                                    _windows(2), 24.0, acc))
    assert parts == [] and acc.to_dict()["t"] == {
        "read": 2, "used": 0, "dropped": {"unmapped item": 1, "stay not in cohort": 1}}


# ------------------------------------------------------------------ the benchmark's pandas build as reference
@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("mimic_scale", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _template(root: Path) -> Path:
    """A 4-stay MIMIC-IV-shaped template (the benchmark replicates it); stay 3 is shorter than 24 h."""
    hosp, icu = root / "hosp", root / "icu"
    hosp.mkdir(parents=True)
    icu.mkdir()
    pd.DataFrame({"subject_id": [11, 12, 13], "gender": ["F", "M", "F"], "anchor_age": [70, 50, 35],
                  "anchor_year": 2150}).to_csv(hosp / "patients.csv.gz", index=False)
    pd.DataFrame({
        "subject_id": [11, 12, 12, 13], "hadm_id": [21, 22, 23, 24],
        "admittime": ["2150-01-01 00:00:00", "2150-02-01 00:00:00", "2150-03-01 00:00:00", "2150-04-01 00:00:00"],
        "dischtime": ["2150-01-09 00:00:00", "2150-02-09 00:00:00", "2150-03-09 00:00:00", "2150-04-09 00:00:00"],
        "admission_type": "URGENT", "insurance": "Other", "race": "WHITE", "hospital_expire_flag": [0, 1, 0, 0],
    }).to_csv(hosp / "admissions.csv.gz", index=False)
    pd.DataFrame({"subject_id": [11, 12, 12, 13], "hadm_id": [21, 22, 23, 24], "seq_num": 1,
                  "icd_code": ["4019", "I10", "I10", "E119"], "icd_version": [9, 10, 10, 10]}).to_csv(
        hosp / "diagnoses_icd.csv.gz", index=False)
    pd.DataFrame(columns=["labevent_id", "subject_id", "hadm_id", "itemid", "charttime", "storetime", "valuenum"]
                 ).to_csv(hosp / "labevents.csv.gz", index=False)
    pd.DataFrame({
        "subject_id": [11, 12, 12, 13], "hadm_id": [21, 22, 23, 24], "stay_id": [31, 32, 33, 34],
        "first_careunit": "MICU", "last_careunit": "MICU",
        "intime": ["2150-01-01 06:13:27", "2150-02-01 06:00:00", "2150-03-01 10:00:00", "2150-04-02 01:59:59"],
        "outtime": ["2150-01-04 06:00:00", "2150-02-03 07:30:00", "2150-03-01 20:00:00", "2150-04-06 00:00:00"],
        "los": [3.0, 2.06, 0.42, 3.9],
    }).to_csv(icu / "icustays.csv.gz", index=False)
    return root


def test_reader_equals_the_vectorized_pandas_build(benchmark, tmp_path, monkeypatch):
    """The benchmark's correctness check, small: every hourly mean and the window tensors are the same."""
    monkeypatch.setattr(benchmark, "CHUNK_ROWS", 7_000)
    monkeypatch.setattr(hourly, "CHUNK_BINS", 500)
    root = tmp_path / "db"
    made = benchmark.make_database(_template(tmp_path / "template"), root, n_rows=30_000, copies=3, seed=3)
    assert made["icu_stays"] == 12
    from healthfusion.data.cohort import Cohort

    n_events, tensors, counts = benchmark.project_build(root)
    events = Cohort.load(tmp_path / "db-cohort").events  # the cohort folder the build wrote, as the check reads it
    assert n_events == len(events)
    means, ref_tensors, ref_counts = benchmark.pandas_build(root)
    assert counts["read"] == ref_counts["read"] == 30_000
    assert counts["read"] == counts["used"] + sum(counts["dropped"].values())
    assert set(counts["dropped"]) == {"unmapped item", "stay not in cohort", "missing value", "implausible value",
                                      "outside stay window"}
    result = benchmark.compare(benchmark.hourly_means(events), means, tensors, ref_tensors)
    assert result["equal"], result
    assert result["cells"] > 1000 and result["tensor_cells"] > 500
    assert "GCS" in set(means["variable"])


def test_a_bad_value_in_parquet_names_the_file_column_and_row(tmp_path):
    path = tmp_path / "chart.parquet"
    pd.DataFrame({"stay_id": [100, 101], "itemid": 220045, "charttime": ["2150-01-01 01:00:00", "later"],
                  "valuenum": 80.0}).to_parquet(path)
    with pytest.raises(SourceError, match=r"chart\.parquet, column 'charttime', row 1: cannot parse time 'later'"):
        list(hourly.iter_hourly(path, "t", ("stay_id", "itemid", "charttime", "valuenum"), ITEMS, _windows(2),
                                24.0, RowAccounting()))


def test_the_engine_memory_limit_comes_from_the_environment(monkeypatch, tmp_path):
    from healthfusion.data.sources import engine

    monkeypatch.setenv(engine.MEMORY_ENV, "300MB")
    con = engine.connect(spill_dir=tmp_path / "spill")
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    (folder,) = (tmp_path / "spill").iterdir()  # this connection's own spill folder
    assert con.execute("SELECT current_setting('temp_directory')").fetchone()[0] == str(folder)
    engine.close(con)
    assert limit == "286.1 MiB"  # 300 MB
    assert list((tmp_path / "spill").iterdir()) == []  # removed on close
    monkeypatch.setenv(engine.MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match=r"Memory limit 'lots' .* give one like 512MB"):
        engine.connect()
