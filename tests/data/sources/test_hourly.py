"""Hourly means in bounded memory: HourlyBins against pandas, and the MIMIC-IV reader against the benchmark's
vectorized pandas build on a small generated database."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.sources import hourly, hourly_bins
from healthfusion.data.sources.hourly_bins import HourlyBins

BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "mimic_scale.py"


def _random_events(rng, n, n_stays=40, first=-30, last=200, n_vars=5):
    return {"stay": rng.integers(0, n_stays, n), "hour": rng.integers(first, last + 1, n),
            "variable": rng.integers(0, n_vars, n), "value": rng.normal(80, 15, n), "offset": rng.random(n)}


@pytest.mark.parametrize("shard_stays, min_pending", [(512, 1 << 16), (3, 7)])
def test_hourly_bins_equal_a_pandas_group_mean(monkeypatch, shard_stays, min_pending):
    monkeypatch.setattr(hourly_bins, "SHARD_STAYS", shard_stays)  # many shards, merged often
    monkeypatch.setattr(hourly_bins, "MIN_PENDING", min_pending)
    rng = np.random.default_rng(0)
    blocks = [_random_events(rng, n) for n in (500, 0, 3000, 1, 2500)]
    bins = HourlyBins(n_stays=40, n_variables=5, first_hour=-30, last_hour=200)
    for b in blocks:
        bins.add(**b)
    assert bins.n_added == 6001
    got = pd.DataFrame(bins.result())
    df = pd.concat([pd.DataFrame(b) for b in blocks], ignore_index=True)
    want = df.groupby(["stay", "hour", "variable"]).agg(value=("value", "mean"), offset=("offset", "mean"),
                                                        count=("value", "size")).reset_index()
    assert got[["stay", "hour", "variable", "count"]].to_numpy().tolist() == \
        want[["stay", "hour", "variable", "count"]].to_numpy().tolist()  # same cells, sorted the same way
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)
    np.testing.assert_allclose(got["offset"], want["offset"], atol=1e-6)  # offsets are summed in float32
    assert (got["offset"] < 1).all()


def test_hourly_bins_memory_is_bounded_by_cells_not_rows():
    bins = HourlyBins(n_stays=2, n_variables=1, first_hour=0, last_hour=9)
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = 100_000
        bins.add(rng.integers(0, 2, n), rng.integers(0, 10, n), np.zeros(n, int), rng.random(n), rng.random(n))
    assert bins.n_added == 2_000_000 and bins.n_bins <= 20 * 20  # at most 2 x 10 cells per pending block
    assert len(bins.result()["value"]) == 20


def test_spilled_state_gives_the_same_means_shard_by_shard(monkeypatch, tmp_path):
    """With a tiny memory budget the state goes to disk many times; the means are those of the in-memory run,
    chunks come in stay order (one per shard) and the spill files are gone at the end."""
    monkeypatch.setattr(hourly_bins, "SHARD_STAYS", 8)
    monkeypatch.setattr(hourly_bins, "MIN_PENDING", 50)
    rng = np.random.default_rng(4)
    blocks = [_random_events(rng, 2000) for _ in range(6)]
    kept = HourlyBins(n_stays=40, n_variables=5, first_hour=-30, last_hour=200)
    spilled = HourlyBins(n_stays=40, n_variables=5, first_hour=-30, last_hour=200, memory_rows=300,
                         spill_dir=tmp_path / "spill")
    for b in blocks:
        kept.add(**b)
        spilled.add(**b)
        assert spilled.n_bins <= 300 + 2000  # memory: the budget plus at most one reduced block
    assert spilled.n_spills >= 5 and kept.n_spills == 0
    chunks = list(spilled.chunks())
    assert len(chunks) == 5  # 40 stays / 8 per shard
    assert all(c["stay"].min() // 8 == c["stay"].max() // 8 for c in chunks)
    got, want = ({k: np.concatenate([c[k] for c in parts]) for k in parts[0]} for parts in (chunks, [kept.result()]))
    for name in ("stay", "hour", "variable", "count"):
        np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)
    np.testing.assert_allclose(got["offset"], want["offset"], atol=1e-6)
    assert list((tmp_path / "spill").iterdir()) == []  # spill folder of this run removed


def test_hourly_bins_reject_bad_sizes():
    with pytest.raises(ValueError, match="first_hour <= last_hour"):
        HourlyBins(n_stays=1, n_variables=1, first_hour=5, last_hour=4)
    with pytest.raises(ValueError, match="do not fit an int64 key"):
        HourlyBins(n_stays=2**40, n_variables=100, first_hour=0, last_hour=2**20)


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
    events, tensors, counts = benchmark.project_build(root)
    means, ref_tensors, ref_counts = benchmark.pandas_build(root)
    assert counts["read"] == ref_counts["read"] == 30_000
    assert counts["read"] == counts["used"] + sum(counts["dropped"].values())
    assert set(counts["dropped"]) == {"unmapped item", "stay not in cohort", "missing value", "implausible value",
                                      "outside stay window"}
    result = benchmark.compare(benchmark.hourly_means(events), means, tensors, ref_tensors)
    assert result["equal"], result
    assert result["cells"] > 1000 and result["tensor_cells"] > 500
    assert "GCS" in set(means["variable"])


def test_hourly_bins_with_nothing_added_give_typed_empty_means():
    got = HourlyBins(n_stays=3, n_variables=2, first_hour=-2, last_hour=5).result()
    assert {k: (len(v), v.dtype) for k, v in got.items()} == {
        "stay": (0, np.int32), "hour": (0, np.int32), "variable": (0, np.int32), "value": (0, np.float64),
        "offset": (0, np.float32), "count": (0, np.uint32)}
