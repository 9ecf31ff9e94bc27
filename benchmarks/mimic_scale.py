"""MIMIC-IV chartevents at scale: the project's streaming build against a vectorized pandas build.

Run on demand (not a test)::

    nice -n 10 .venv/bin/python benchmarks/mimic_scale.py                 # 2M, 10M and 50M rows
    nice -n 10 .venv/bin/python benchmarks/mimic_scale.py --sizes 200000  # a quick smoke run

For each size it writes a MIMIC-format database under ``--work`` (default /tmp/hf-bench): the MIMIC-IV demo's
patients, admissions, ICU stays and diagnoses replicated ``--copies`` times with new ids, an empty labevents
table (so the timings isolate chartevents) and a synthetic ``icu/chartevents.csv.gz`` of that many rows, in
the real column layout. About 20 % of the rows carry mapped itemids (heart rate, blood pressures, SpO2,
temperature in degF/degC, GCS components, ...) with realistic values, a few implausible and a few missing; the
rest are unmapped items (alarm limits, nurse-transcribed labs, text assessments), as in MIMIC-IV. Rows fall on
stays in proportion to their length, a few before ICU admission (kept: lab lookback), after ICU discharge
(dropped) or on stays that are too short or unknown (dropped).

Then, each in a fresh interpreter (``python benchmarks/mimic_scale.py --child ...``) whose peak resident
memory is read from its own ``ru_maxrss`` (``os.wait4``; database writing and the check run in children too, so
the parent, which a child's ``ru_maxrss`` starts from, stays small):

(a) ``project`` on the CSV database: :func:`healthfusion.data.sources.mimic4.build` (the whole cohort: stays,
    labels, codes, chartevents streamed into hourly means, written to a cohort folder chunk by chunk as
    ``healthfusion cohort build`` does), then tensors ``values``/``mask`` [stays, 48 h,
    variables] of the 48 hours before the prediction time (24 h), read through the leakage guard
    ``Cohort.observable``;
(b) ``pandas`` on the CSV database: the same transformation as a vectorized pandas program - read the CSV
    (C parser, the 4 columns, typed), join the item map and icustays, convert units, drop implausible values,
    bin to hours since ICU admission, group mean, derive GCS, pivot to one row per stay-hour, cut the same
    tensors;
(c) ``convert``: the one-time :func:`~healthfusion.data.sources.convert.convert_to_parquet` of the database;
(d) ``project`` on the Parquet copy.

It prints seconds (the build, imports excluded), rows per second, CPU seconds and peak RSS of each child, and
the speed-ups of (a), (c) and (d) over (b), in wall and in CPU time (the machine may be shared), and (a) as a
multiple of decompressing the chartevents file alone (``gzip -dc > /dev/null``, wall and CPU). On the first
size it checks that (a) and (b) give the same hourly means (every stay, hour and variable) and the same tensors.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from healthfusion.data.plausibility import PLAUSIBLE_RANGES
from healthfusion.data.sources.itemmap import GCS_COMPONENTS, mimic4_items

DEMO = Path(os.environ.get("HEALTHFUSION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "mimic_iv_demo"
PREDICTION_HOURS = 24.0
LOOKBACK_HOURS = 24.0
WINDOW_HOURS = 48.0  # tensors cover the 48 h before the prediction time
ID_STEP = 10_000_000  # copy k of an id is id + k * ID_STEP (MIMIC-IV ids have 8 digits)
CHART_COLUMNS = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid",
                 "value", "valuenum", "valueuom", "warning"]

# Mapped chartevents items: itemid -> (relative frequency, mean, sd, decimals, unit); frequencies roughly as
# in MIMIC-IV, values in the source unit.
MAPPED = {
    220045: (8.5, 86, 18, 0, "bpm"),
    220050: (3.0, 121, 22, 0, "mmHg"), 220051: (3.0, 61, 12, 0, "mmHg"), 220052: (3.0, 80, 14, 0, "mmHg"),
    225309: (0.2, 118, 22, 0, "mmHg"), 225310: (0.2, 60, 12, 0, "mmHg"), 225312: (0.2, 79, 14, 0, "mmHg"),
    220179: (4.5, 120, 21, 0, "mmHg"), 220180: (4.5, 64, 13, 0, "mmHg"), 220181: (4.5, 79, 14, 0, "mmHg"),
    220210: (7.0, 19, 5, 0, "insp/min"), 224690: (1.0, 20, 5, 0, "insp/min"),
    220277: (8.3, 96.5, 2.5, 0, "%"),
    223761: (1.8, 98.6, 1.3, 1, "°F"), 223762: (0.3, 37.0, 0.7, 1, "°C"),
    220739: (1.6, 3.3, 0.9, 0, ""), 223900: (1.6, 3.5, 1.7, 0, ""), 223901: (1.6, 5.4, 1.2, 0, ""),
    225664: (1.0, 140, 45, 0, "mg/dL"),
    223835: (1.0, 50, 20, 0, "%"),
    226512: (0.07, 82, 22, 1, "kg"), 224639: (0.2, 84, 23, 1, "kg"), 226531: (0.05, 180, 45, 0, "lbs"),
    226730: (0.05, 170, 10, 0, "cm"), 226707: (0.03, 67, 4, 0, "Inch"),
}
GCS_RANGE = {220739: (1, 4), 223900: (1, 5), 223901: (1, 6)}
# Unmapped chartevents items of MIMIC-IV (alarm limits, nurse-transcribed labs, assessments):
# itemid -> (mean, sd, unit) for numeric ones, a list of texts for text ones.
UNMAPPED = {
    220046: (120, 10, "bpm"), 220047: (50, 5, "bpm"), 223751: (160, 15, "mmHg"), 223752: (90, 10, "mmHg"),
    220615: (1.2, 0.8, "mg/dL"), 227442: (4.1, 0.5, "mEq/L"), 220292: (3, 1, "L/min"), 226253: (88, 2, "%"),
    224641: ["Yes"], 227969: ["Side rails up x 2", "Bed alarm on", "Call light in reach"],
    224650: ["None", "PVC's"], 223999: ["Moist", "Dry"], 220048: ["SR (Sinus Rhythm)", "AF (Atrial Fibrillation)"],
    224080: ["30 Degrees", "45 Degrees"], 224082: ["Turn and reposition"], 224086: ["Tolerated well"],
    228096: ["0 Alert and calm", "-1 Drowsy"], 224093: ["Left Side", "Right Side", "Supine"],
}
MAPPED_FRACTION = 0.20
IMPLAUSIBLE_FRACTION = 0.002
MISSING_FRACTION = 0.003
CHUNK_ROWS = 1_000_000


# ---------------------------------------------------------------------------------------------- the database
def make_database(template: Path, root: Path, n_rows: int, copies: int, seed: int = 0) -> dict:
    """Write a MIMIC-format database of ``copies`` replicas of ``template``'s stays and ``n_rows`` synthetic
    chartevents under ``root``; return a summary (stays, rows, seconds)."""
    start = time.perf_counter()
    hosp, icu = root / "hosp", root / "icu"
    hosp.mkdir(parents=True, exist_ok=True)
    icu.mkdir(parents=True, exist_ok=True)
    ids = {"subject_id", "hadm_id", "stay_id"}
    tables = {}
    for folder, name in (("hosp", "patients"), ("hosp", "admissions"), ("icu", "icustays"),
                         ("hosp", "diagnoses_icd")):
        df = pd.read_csv(template / folder / f"{name}.csv.gz")
        keys = [c for c in df.columns if c in ids]
        parts = [df.assign(**{c: df[c] + k * ID_STEP for c in keys}) for k in range(copies)]
        tables[name] = pd.concat(parts, ignore_index=True)
        tables[name].to_csv(root / folder / f"{name}.csv.gz", index=False)
    header = pd.read_csv(template / "hosp" / "labevents.csv.gz", nrows=0)
    header.to_csv(hosp / "labevents.csv.gz", index=False)
    stays = tables["icustays"]
    _write_chartevents(icu / "chartevents.csv.gz", stays, n_rows, np.random.default_rng(seed))
    return {"icu_stays": len(stays), "rows": n_rows, "seconds": time.perf_counter() - start}


def _write_chartevents(path: Path, stays: pd.DataFrame, n_rows: int, rng: np.random.Generator) -> None:
    """Rows grouped by stay and sorted by time within a stay, as MIMIC-IV ships them; each stay gets rows in
    proportion to its length."""
    intime = pd.to_datetime(stays["intime"]).to_numpy().astype("datetime64[s]").astype(np.int64)
    outtime = pd.to_datetime(stays["outtime"]).to_numpy().astype("datetime64[s]").astype(np.int64)
    length = np.maximum(outtime - intime, 60)
    per_stay = rng.multinomial(n_rows, length / length.sum())
    order = rng.permutation(len(stays))
    mapped_ids = np.array(list(MAPPED))
    mapped_p = np.array([v[0] for v in MAPPED.values()])
    mapped_p = mapped_p / mapped_p.sum()
    unmapped_ids = np.array(list(UNMAPPED))
    bounds = np.searchsorted(np.cumsum(per_stay[order]), np.arange(CHUNK_ROWS, n_rows, CHUNK_ROWS), side="right")
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write((",".join(CHART_COLUMNS) + "\n").encode())
        for group in np.split(order, bounds):
            s = np.repeat(group, per_stay[group])
            if len(s):
                table = _chart_chunk(s, stays, intime, length, mapped_ids, mapped_p, unmapped_ids, rng)
                sink = pa.BufferOutputStream()
                pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(include_header=False,
                                                                               quoting_style="none"))
                fh.write(sink.getvalue().to_pybytes())


def _chart_chunk(s, stays, intime, length, mapped_ids, mapped_p, unmapped_ids, rng) -> pa.Table:
    n = len(s)
    where = rng.random(n)
    offset = rng.random(n) * length[s]
    offset = np.where(where < 0.01, -rng.random(n) * 6 * 3600, offset)  # before ICU admission (lookback)
    offset = np.where(where > 0.99, length[s] + rng.random(n) * 12 * 3600, offset)  # after discharge
    chart = (intime[s] + offset.astype(np.int64)) // 60 * 60  # whole minutes, as charted
    by_time = np.lexsort((chart, s))
    s, chart = s[by_time], chart[by_time]
    stay_id = stays["stay_id"].to_numpy()[s]
    unknown = rng.random(n) < 0.001
    stay_id = np.where(unknown, 99_000_000 + s, stay_id)

    is_mapped = rng.random(n) < MAPPED_FRACTION
    item = np.where(is_mapped, rng.choice(mapped_ids, size=n, p=mapped_p), rng.choice(unmapped_ids, size=n))
    valuenum = np.full(n, np.nan)
    text = np.full(n, None, dtype=object)
    unit = np.full(n, "", dtype=object)
    for itemid, spec in MAPPED.items():
        hit = item == itemid
        k = int(hit.sum())
        if not k:
            continue
        _, mean, sd, decimals, uom = spec
        if itemid in GCS_RANGE:
            low, high = GCS_RANGE[itemid]
            v = rng.integers(low, high + 1, size=k).astype(float)
        else:
            v = np.round(np.abs(rng.normal(mean, sd, size=k)), decimals)
            if itemid in (220277, 223835):
                v = np.clip(v, 21 if itemid == 223835 else 60, 100)
        bad = rng.random(k) < IMPLAUSIBLE_FRACTION
        v = np.where(bad, v * 10 + 1000, v)  # a unit slip or a typo: outside the plausible range
        v = np.where(rng.random(k) < MISSING_FRACTION, np.nan, v)
        valuenum[hit] = v
        unit[hit] = uom
    for itemid, spec in UNMAPPED.items():
        hit = item == itemid
        k = int(hit.sum())
        if not k:
            continue
        if isinstance(spec, list):
            text[hit] = np.asarray(spec, dtype=object)[rng.integers(0, len(spec), size=k)]
        else:
            valuenum[hit] = np.round(rng.normal(spec[0], spec[1], size=k), 1)
            unit[hit] = spec[2]
    num = pa.array(valuenum, from_pandas=True)
    value = pc.if_else(pc.is_valid(num), pc.cast(num, pa.string()), pa.array(text, pa.string()))
    return pa.table({
        "subject_id": stays["subject_id"].to_numpy()[s],
        "hadm_id": stays["hadm_id"].to_numpy()[s],
        "stay_id": stay_id,
        "caregiver_id": rng.integers(10_000, 99_999, size=n),
        "charttime": pc.cast(pa.array(chart.astype("datetime64[s]")), pa.string()),
        "storetime": pc.cast(pa.array((chart + rng.integers(0, 90, size=n) * 60).astype("datetime64[s]")),
                             pa.string()),
        "itemid": item,
        "value": value,
        "valuenum": num,
        "valueuom": pa.array(unit, pa.string()),
        "warning": np.zeros(n, dtype=np.int8),
    })


# ---------------------------------------------------------------------------------------------- the builds
def project_build(root: Path) -> tuple[int, dict[str, np.ndarray], dict]:
    """(a)/(d): the project's reader writing the cohort folder ``<root>-cohort`` as it reads (hourly means
    streamed out chunk by chunk), then the tensors of the 48 h before the prediction time from what the leakage
    guard lets through (a filtered read of the folder). Returns the number of the cohort's events (the check
    reads the folder in its own child), the tensors and the chartevents row accounting."""
    from healthfusion.data.sources.mimic4 import build

    folder = root.parent / f"{root.name}-cohort"
    shutil.rmtree(folder, ignore_errors=True)
    cohort = build(root, prediction_hours=PREDICTION_HOURS, lookback_hours=LOOKBACK_HOURS, out=folder)
    seen = cohort.observable("events", start=PREDICTION_HOURS - WINDOW_HOURS)
    hour = np.floor(seen["time"].to_numpy() - (PREDICTION_HOURS - WINDOW_HOURS)).astype("int64")
    seen, hour = seen[hour < WINDOW_HOURS], hour[hour < WINDOW_HOURS]  # hours whose values all fall at p itself
    stays = np.sort(cohort.stay_ids.astype("int64"))
    cells = pd.DataFrame({"s": _index_in(seen["stay_id"], stays.astype(str)), "h": hour,
                          "v": _index_in(seen["variable"], chart_variables()), "value": seen["value"].to_numpy()})
    kept = json.loads((folder / "cohort.json").read_text())["tables"]["events"]
    return kept, _tensors(cells, len(stays)), cohort.accounting.to_dict()["chartevents"]


def _index_in(values: pd.Series, table) -> np.ndarray:
    """Position of each value in ``table`` (strings), looked up in pyarrow (no Python object per row)."""
    pos = pc.index_in(pa.array(values, type=pa.string()), value_set=pa.array(list(table), type=pa.string()))
    return pos.to_numpy(zero_copy_only=False)


def _tensors(cells: pd.DataFrame, n_stays: int) -> dict[str, np.ndarray]:
    """values/mask [stays, 48, variables] from one row per cell (s, h, v indices and the hourly mean)."""
    values = np.zeros((n_stays, int(WINDOW_HOURS), len(chart_variables())), dtype=np.float32)
    mask = np.zeros(values.shape, dtype=bool)
    values[cells["s"], cells["h"], cells["v"]] = cells["value"].to_numpy(dtype=np.float32)
    mask[cells["s"], cells["h"], cells["v"]] = True
    return {"values": values, "mask": mask}


def pandas_build(root: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict]:
    """(b): the same transformation as a vectorized pandas program on the CSV files. Returns the hourly means
    (long: stay_id, hour, variable, value), tensors ``values``/``mask`` [stays, 48, variables] of the 48 h
    before the prediction time and the row count."""
    icu = pd.read_csv(root / "icu" / "icustays.csv.gz", usecols=["stay_id", "intime", "outtime"])
    icu["intime"] = pd.to_datetime(icu["intime"])
    icu["los_hours"] = (pd.to_datetime(icu["outtime"]) - icu["intime"]) / pd.Timedelta(hours=1)
    icu = icu.loc[icu["los_hours"] >= PREDICTION_HOURS, ["stay_id", "intime", "los_hours"]]
    items = mimic4_items("chartevents")[["variable", "factor", "offset"]]
    ce = pd.read_csv(root / "icu" / "chartevents.csv.gz", usecols=["stay_id", "charttime", "itemid", "valuenum"],
                     dtype={"stay_id": "int64", "itemid": "int64", "valuenum": "float64", "charttime": "str"})
    n_rows = len(ce)
    ce = ce.merge(items, left_on="itemid", right_index=True).merge(icu, on="stay_id")
    ce = ce[ce["charttime"].notna() & ce["valuenum"].notna()]
    ce["value"] = ce["valuenum"] * ce["factor"] + ce["offset"]
    bounds = pd.DataFrame({v: PLAUSIBLE_RANGES.get(v, (-np.inf, np.inf, ""))[:2] for v in chart_variables()},
                          index=["low", "high"]).T
    ce = ce.join(bounds, on="variable")
    ce = ce[(ce["value"] >= ce["low"]) & (ce["value"] <= ce["high"])]
    ce["hours"] = (pd.to_datetime(ce["charttime"], format="ISO8601") - ce["intime"]) / pd.Timedelta(hours=1)
    ce = ce[(ce["hours"] >= -LOOKBACK_HOURS) & (ce["hours"] <= ce["los_hours"])]
    ce["hour"] = np.floor(ce["hours"]).astype("int64")
    wide = ce.groupby(["stay_id", "hour", "variable"])["value"].mean().unstack("variable")
    wide["GCS"] = wide[list(GCS_COMPONENTS)].sum(axis=1).where(wide[list(GCS_COMPONENTS)].notna().all(axis=1))
    long = wide.stack().dropna().rename("value").reset_index()
    # the tensors: hours [p - 48, p) of every cohort stay
    stays = np.sort(icu["stay_id"].to_numpy())
    window = long[(long["hour"] >= PREDICTION_HOURS - WINDOW_HOURS) & (long["hour"] < PREDICTION_HOURS)]
    cells = pd.DataFrame({"s": np.searchsorted(stays, window["stay_id"].to_numpy()),
                          "h": window["hour"].to_numpy() - int(PREDICTION_HOURS - WINDOW_HOURS),
                          "v": pd.Index(chart_variables()).get_indexer(window["variable"]),
                          "value": window["value"].to_numpy()})
    return long, _tensors(cells, len(stays)), {"read": n_rows}


def chart_variables() -> list[str]:
    return sorted(set(mimic4_items("chartevents")["variable"]) | {"GCS"})


def hourly_means(events: pd.DataFrame) -> pd.DataFrame:
    """The project's chart events as (stay_id, hour, variable, value): hour = the hour since ICU admission."""
    ev = events[events["variable"].isin(chart_variables())]
    return pd.DataFrame({"stay_id": ev["stay_id"].astype("int64").to_numpy(),
                         "hour": np.floor(ev["time"].to_numpy()).astype("int64"),
                         "variable": ev["variable"].astype(str).to_numpy(), "value": ev["value"].to_numpy()})


def compare(project: pd.DataFrame, reference: pd.DataFrame, project_tensors: dict | None = None,
            reference_tensors: dict | None = None) -> dict:
    """The two builds' hourly means (every stay, hour and variable: the same cells, values within 1e-9
    relative) and, when given, their tensors (the same mask, values within float32 rounding)."""
    key = ["stay_id", "hour", "variable"]
    a = project.sort_values(key).reset_index(drop=True)
    b = reference.astype({"variable": str}).sort_values(key).reset_index(drop=True)
    same_cells = len(a) == len(b) and bool((a[key].to_numpy() == b[key].to_numpy()).all())
    diff = float(np.max(np.abs(a["value"] - b["value"]) / np.maximum(1.0, np.abs(b["value"])))) if len(a) else 0.0
    out = {"cells": len(a), "reference_cells": len(b), "same_cells": same_cells,
           "max_rel_diff": diff if same_cells else None}
    out["equal"] = same_cells and diff <= 1e-9
    if project_tensors is not None and reference_tensors is not None:
        same_mask = bool(np.array_equal(project_tensors["mask"], reference_tensors["mask"]))
        close = bool(np.allclose(project_tensors["values"], reference_tensors["values"], rtol=1e-6, atol=1e-6))
        out.update(tensor_cells=int(reference_tensors["mask"].sum()), same_mask=same_mask, tensors_close=close)
        out["equal"] = out["equal"] and same_mask and close
    return out


# ---------------------------------------------------------------------------------------------- the runs
def _child(mode: str, root: Path, out: Path, save: Path | None, rows: int = 0, copies: int = 0) -> None:
    """One step in this (fresh) process; writes its figures as JSON to ``out``."""
    start = time.perf_counter()
    figures = {}
    if mode == "make":
        figures = make_database(DEMO, root, rows, copies)
    elif mode == "convert":
        from healthfusion.data.sources.convert import convert_to_parquet

        convert_to_parquet(root, save)
    elif mode == "check":
        from healthfusion.data.cohort import Cohort

        figures = compare(hourly_means(Cohort.load(save).events), pd.read_parquet(root / "pandas-means.parquet"),
                          dict(np.load(root / "project-means.npz")), dict(np.load(root / "pandas-means.npz")))
    else:
        if mode == "pandas":
            means, tensors, counts = pandas_build(root)
        else:
            means, tensors, counts = project_build(root)
        n_means = means if isinstance(means, int) else len(means)
        figures = {"rows": counts["read"], "hourly_means": n_means, "tensor_shape": list(tensors["mask"].shape),
                   "observed": int(tensors["mask"].sum())}
    figures["seconds"] = time.perf_counter() - start
    figures["vm_hwm_mb"] = _vm_hwm_mb()
    if save is not None and mode in ("project", "pandas"):
        if mode == "pandas":  # the check reads the project's hourly means from its cohort folder
            means.to_parquet(save)
        np.savez(save.with_suffix(".npz"), **tensors)
    out.write_text(json.dumps(figures))


def _vm_hwm_mb() -> float | None:
    """This process's peak resident memory from /proc (Linux), a cross-check of ru_maxrss."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    line = next((x for x in status.read_text().splitlines() if x.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else None


def _measure(mode: str, root: Path, work: Path, save: Path | None = None, extra: list[str] = ()) -> dict:
    """Run ``mode`` in a fresh interpreter; add its wall time, CPU time and peak RSS (its own ru_maxrss, from
    wait4). The heavy work of the benchmark all runs in such children, so the parent's memory (which a child's
    ru_maxrss starts from) stays below what any child uses."""
    out = work / f"{mode}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--out", str(out), *extra]
    if save is not None:
        cmd += ["--save", str(save)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    figures = json.loads(out.read_text()) if proc.returncode == 0 and out.is_file() else {}
    return {"mode": mode, "exit": proc.returncode, "wall_seconds": wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024, **figures}


def _measure_zcat(path: Path) -> dict:
    """Decompressing the file alone (``gzip -dc FILE > /dev/null``): the floor of any reader of the CSV."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        proc = subprocess.Popen(["gzip", "-dc", str(path)], stdout=sink)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return {"mode": "zcat", "exit": os.waitstatus_to_exitcode(status), "wall_seconds": wall, "seconds": wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def run(sizes: list[int], copies: int, work: Path, keep: bool, reuse: bool = False) -> list[dict]:
    results = []
    for i, n in enumerate(sizes):
        root, parquet = work / f"csv-{n}", work / f"parquet-{n}"
        shutil.rmtree(parquet, ignore_errors=True)
        summary = root / "made.json"
        if reuse and summary.is_file():
            made = json.loads(summary.read_text())
        else:
            shutil.rmtree(root, ignore_errors=True)
            made = _measure("make", root, work, extra=["--rows", str(n), "--copies", str(copies)])
            if made["exit"] != 0:
                raise SystemExit(f"writing the {n:,}-row database failed (exit {made['exit']})")
            summary.write_text(json.dumps(made))
        print(f"\n== {n:,} chartevents rows, {made['icu_stays']:,} ICU stays "
              f"({(root / 'icu' / 'chartevents.csv.gz').stat().st_size / 1e6:.0f} MB gzipped; "
              f"written in {made['seconds']:.0f} s)", flush=True)
        check = i == 0
        row = {"rows": n, "icu_stays": made["icu_stays"]}
        row["zcat"] = _measure_zcat(root / "icu" / "chartevents.csv.gz")
        _report(row["zcat"], n)
        row["project_csv"] = _measure("project", root, work, work / "project-means.npz" if check else None)
        _report(row["project_csv"], n)
        row["pandas_csv"] = _measure("pandas", root, work, work / "pandas-means.parquet" if check else None)
        _report(row["pandas_csv"], n)
        row["convert"] = _measure("convert", root, work, parquet)
        _report(row["convert"], n)
        row["project_parquet"] = _measure("project", parquet, work)
        _report(row["project_parquet"], n)
        if check and row["project_csv"]["exit"] == 0 and row["pandas_csv"]["exit"] == 0:
            row["check"] = c = _measure("check", work, work, work / f"csv-{n}-cohort")
            print(f"   check on {n:,} rows: {'EQUAL' if c.get('equal') else 'DIFFERENT'} - {c.get('cells', 0):,} "
                  f"hourly means (pandas {c.get('reference_cells', 0):,}), max relative difference "
                  f"{c.get('max_rel_diff')}; tensors: same mask {c.get('same_mask')}, values close "
                  f"{c.get('tensors_close')}", flush=True)
        results.append(row)
        if not keep:
            for folder in (root, parquet, work / f"csv-{n}-cohort", work / f"parquet-{n}-cohort"):
                shutil.rmtree(folder, ignore_errors=True)
    return results


def _report(r: dict, n: int) -> None:
    if r["exit"] != 0 or "seconds" not in r:
        print(f"   {r['mode']:<8} FAILED (exit {r['exit']}) after {r['wall_seconds']:.1f} s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        return
    cells = f"  {r['hourly_means']:,} hourly means" if "hourly_means" in r else ""
    print(f"   {r['mode']:<8} {r['seconds']:7.1f} s  {n / r['seconds'] / 1e6:5.2f} M rows/s  "
          f"CPU {r['cpu_seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB{cells}", flush=True)


def table(results: list[dict]) -> str:
    """The results as a Markdown table: wall seconds of the build (in the child, imports excluded), rows per
    wall second, CPU seconds of the whole child, its peak RSS, and the speed-up over pandas on the CSV in wall
    and in CPU time."""
    lines = ["| chartevents rows | build | seconds | M rows/s | CPU s | peak RSS (MB) | vs pandas CSV (wall / CPU); CSV build as a multiple of zcat |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    names = {"zcat": "zcat of chartevents (decompression alone)", "project_csv": "project, CSV",
             "pandas_csv": "pandas, CSV", "convert": "CSV -> Parquet (once)", "project_parquet": "project, Parquet"}
    for row in results:
        base = row["pandas_csv"]
        for key, name in names.items():
            r = row[key]
            if "seconds" not in r:
                lines.append(f"| {row['rows']:,} | {name} | failed (exit {r['exit']}) | | "
                             f"{r['cpu_seconds']:.0f} | {r['peak_rss_mb']:.0f} | |")
                continue
            ratio = ""
            if key == "project_csv" and "seconds" in row["zcat"] and "seconds" in base:
                z = row["zcat"]
                ratio = (f"{base['seconds'] / r['seconds']:.1f}x / {base['cpu_seconds'] / r['cpu_seconds']:.1f}x; "
                         f"{r['seconds'] / z['seconds']:.1f}x / {r['cpu_seconds'] / z['cpu_seconds']:.1f}x zcat")
            elif "seconds" in base and key not in ("pandas_csv", "zcat"):
                ratio = f"{base['seconds'] / r['seconds']:.1f}x / {base['cpu_seconds'] / r['cpu_seconds']:.1f}x"
            lines.append(f"| {row['rows']:,} | {name} | {r['seconds']:.1f} | {row['rows'] / r['seconds'] / 1e6:.2f} "
                         f"| {r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 10_000_000, 50_000_000],
                        help="chartevents rows of each database (default: 2M 10M 50M)")
    parser.add_argument("--copies", type=int, default=78,
                        help="replicas of the demo's 140 ICU stays (default 78: 10,920 stays, MIMIC-IV's "
                             "charting density at 50M rows)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hf-bench"), help="scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the generated databases")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a database kept by an earlier --keep run of the same size and copies")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", choices=["make", "project", "pandas", "convert", "check"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.root, args.out, args.save, args.rows, args.copies)
        return
    if not (DEMO / "icu" / "icustays.csv.gz").is_file():
        parser.error(f"the MIMIC-IV demo is not at {DEMO}")
    args.work.mkdir(parents=True, exist_ok=True)
    results = run(sorted(args.sizes), args.copies, args.work, args.keep, args.reuse)
    print("\n" + table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
