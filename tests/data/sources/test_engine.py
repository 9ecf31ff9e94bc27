"""The table engine's hourly means against the previous implementation (pyarrow blocks reduced in numpy): the
same events and the same row accounting, on the real MIMIC-IV demo and on a generated chartevents table."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healthfusion.data.accounting import RowAccounting
from healthfusion.data.sources import hourly, hourly_bins
from healthfusion.data.sources.io import find_table
from healthfusion.data.sources.itemmap import GCS_COMPONENTS, mimic4_items
from healthfusion.data.sources.mimic4 import _stays

BENCHMARK = Path(__file__).resolve().parents[3] / "benchmarks" / "mimic_scale.py"


def _both(path: Path, table: str, columns: tuple, items: pd.DataFrame, windows: pd.DataFrame, pred: float):
    """The events and accounting of both implementations, events sorted."""
    out = []
    for impl in (hourly_bins.iter_hourly, hourly.iter_hourly):
        acc = RowAccounting()
        parts = list(impl(path, table, columns, items, windows, pred, acc, derived={"GCS": GCS_COMPONENTS}))
        events = pd.concat(parts, ignore_index=True).astype({"stay_id": str, "variable": str})
        key = ["stay_id", "variable", "time"]
        out.append((events.sort_values(key).reset_index(drop=True), acc.to_dict()))
    return out


def _assert_same(old, new):
    (old_events, old_acc), (new_events, new_acc) = old, new
    assert new_acc == old_acc
    assert len(new_events) == len(old_events) > 0
    assert (new_events[["stay_id", "variable"]].to_numpy() == old_events[["stay_id", "variable"]].to_numpy()).all()
    assert (np.floor(new_events["time"]) == np.floor(old_events["time"])).all()  # the same hour
    # mean times: float32 sums before, float64 sums now; mean values: the same sums in another order
    np.testing.assert_allclose(new_events["time"], old_events["time"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(new_events["value"], old_events["value"], rtol=1e-12, atol=0)


def _windows(root: Path, lookback: float = 24.0) -> pd.DataFrame:
    acc = RowAccounting()
    stays = _stays(root, acc, 24.0)
    return stays[["subject_id", "stay_key", "stay_id", "intime"]].assign(start=-lookback, end=stays["los_hours"])


@pytest.mark.realdata
def test_engine_equals_the_previous_implementation_on_the_demo(shared_dataset):
    """The demo ships no chartevents; its outputevents (same layout: stay_id, itemid, charttime, value) go
    through both implementations of the hourly reduction."""
    demo = shared_dataset("mimic_iv_demo")
    old, new = _both(find_table(demo / "icu", "outputevents"), "outputevents",
                     ("stay_id", "itemid", "charttime", "value"), mimic4_items("outputevents"), _windows(demo), 24.0)
    _assert_same(old, new)
    assert set(new[1]["outputevents"]["dropped"]) >= {"unmapped item", "stay not in cohort"}


def test_engine_equals_the_previous_implementation_on_generated_chartevents(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("mimic_scale", BENCHMARK)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    from tests.data.sources.test_hourly import _template

    monkeypatch.setattr(benchmark, "CHUNK_ROWS", 7_000)
    monkeypatch.setattr(hourly, "CHUNK_BINS", 500)
    root = tmp_path / "db"
    benchmark.make_database(_template(tmp_path / "template"), root, n_rows=30_000, copies=3, seed=5)
    old, new = _both(root / "icu" / "chartevents.csv.gz", "chartevents", ("stay_id", "itemid", "charttime", "valuenum"),
                     mimic4_items("chartevents"), _windows(root), 24.0)
    _assert_same(old, new)
    assert set(new[1]["chartevents"]["dropped"]) == {"unmapped item", "stay not in cohort", "missing value",
                                                     "implausible value", "outside stay window"}
    assert "GCS" in set(new[0]["variable"])
