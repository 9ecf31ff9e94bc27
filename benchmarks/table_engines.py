"""Choosing the table engine: the same filter + hourly group-by over one chartevents file, in DuckDB and polars.

Run on demand (not a test), on a ``chartevents.csv.gz`` written by ``benchmarks/mimic_scale.py --keep``::

    nice -n 10 .venv/bin/python benchmarks/table_engines.py /tmp/hf-bench/csv-2000000/icu/chartevents.csv.gz

Each variant runs in a fresh interpreter (imports included in its time), three rounds in turn so that a busy
machine weighs on all alike; it prints the wall and CPU seconds (``os.wait4``) and peak RSS of each run, and
checks that every variant finds the same groups. The query: rows of 13 mapped items, grouped by item, stay and
hour since the epoch, with the count and the sum of ``valuenum``.

* ``gzip``: ``gzip -dc FILE > /dev/null``, the floor for any reader of the file;
* ``duckdb-csv``: DuckDB's own CSV reader (every column declared, nothing sniffed);
* ``duckdb-arrow``: pyarrow's streaming CSV reader (the 4 columns, typed) handed to DuckDB as Arrow batches,
  as :mod:`healthfusion.data.sources.engine` does;
* ``polars-stream``: ``polars.scan_csv`` with a schema, collected by the streaming engine;
* ``polars-eager``: ``polars.read_csv`` of the 4 columns (decompresses the whole file into memory first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ITEMS = [220045, 220050, 220051, 220052, 220179, 220180, 220181, 220210, 220277, 223761, 220739, 223900, 223901]
COLUMNS = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime", "storetime", "itemid", "value",
           "valuenum", "valueuom", "warning"]
VARIANTS = ("duckdb-csv", "duckdb-arrow", "polars-stream", "polars-eager")


def _query(variant: str, path: str) -> int:
    """Run one variant; return the number of groups."""
    if variant.startswith("duckdb"):
        import duckdb

        con = duckdb.connect()
        con.execute("SET enable_progress_bar = false; SET preserve_insertion_order = false")
        if variant == "duckdb-csv":
            types = {c: "VARCHAR" for c in COLUMNS} | {"stay_id": "BIGINT", "itemid": "BIGINT",
                                                       "charttime": "TIMESTAMP", "valuenum": "DOUBLE"}
            schema = ", ".join(f"'{c}': '{t}'" for c, t in types.items())
            source = f"read_csv('{path}', header = true, auto_detect = false, columns = {{{schema}}})"
        else:
            import pyarrow as pa
            import pyarrow.csv as pacsv

            kinds = {"stay_id": pa.int64(), "itemid": pa.int64(), "charttime": pa.timestamp("us"),
                     "valuenum": pa.float64()}
            reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 20),
                                    convert_options=pacsv.ConvertOptions(include_columns=list(kinds),
                                                                         column_types=kinds))
            con.register("stream", reader)
            source = "stream"
        sql = (f"SELECT itemid, epoch_us(charttime) // 3600000000 AS h, stay_id, count(*) AS n, sum(valuenum) "
               f"FROM {source} WHERE itemid IN ({', '.join(map(str, ITEMS))}) GROUP BY ALL")
        return len(con.execute(sql).fetchall())
    import polars as pl

    schema = {"stay_id": pl.Int64, "itemid": pl.Int64, "charttime": pl.Datetime("us"), "valuenum": pl.Float64}
    if variant == "polars-stream":
        frame = pl.scan_csv(path, schema_overrides=schema).select(list(schema))
    else:
        frame = pl.read_csv(path, columns=list(schema), schema_overrides=schema).lazy()
    result = (frame.filter(pl.col("itemid").is_in(ITEMS))
              .group_by("itemid", (pl.col("charttime").dt.epoch("us") // 3_600_000_000).alias("h"), "stay_id")
              .agg(pl.len(), pl.col("valuenum").sum()))
    return len(result.collect(engine="streaming" if variant == "polars-stream" else "auto"))


def _measure(cmd: list[str], stdout=None) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout or subprocess.PIPE)
    out = proc.stdout.read() if stdout is None else b""
    _, status, usage = os.wait4(proc.pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - start,
            "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024, "out": out.decode().strip()}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(_query(sys.argv[2], sys.argv[3])))
        return
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    path = sys.argv[1]
    runs: dict[str, list[dict]] = {v: [] for v in ("gzip", *VARIANTS)}
    for _ in range(3):
        with open(os.devnull, "wb") as sink:
            runs["gzip"].append(_measure(["gzip", "-dc", path], stdout=sink))
        for variant in VARIANTS:
            runs[variant].append(_measure([sys.executable, __file__, "--child", variant, path]))
    groups = {v: {r["out"] for r in rs if r["exit"] == 0} for v, rs in runs.items() if v != "gzip"}
    print(f"groups found: {groups} (the same in every variant: {len(set().union(*groups.values())) == 1})")
    print("| variant | wall s (median of 3) | CPU s (median) | peak RSS MB (max) | CPU vs gzip |")
    print("|---|---:|---:|---:|---:|")
    gzip_cpu = sorted(r["cpu"] for r in runs["gzip"])[1]
    for variant, rs in runs.items():
        wall, cpu = sorted(r["wall"] for r in rs)[1], sorted(r["cpu"] for r in rs)[1]
        print(f"| {variant} | {wall:.2f} | {cpu:.2f} | {max(r['rss_mb'] for r in rs):.0f} | {cpu / gzip_cpu:.1f}x |")


if __name__ == "__main__":
    main()
