"""Throughput and peak memory of the synthetic cohort generator (run on demand, not a test).

Each size runs in a fresh subprocess so its peak RSS is its own. The reference, measured in the same run, is a
plain copy of the generated Parquet tables with pyarrow (read + write of the same rows): the ratio says how close
generation gets to pure I/O.

    python benchmarks/synthetic_generator.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TABLES = ("stays", "static", "events", "codes", "notes", "images", "labels")


def _child(mode: str, n: int, folder: str) -> None:
    import pyarrow.parquet as pq

    from healthfusion.data import synthetic

    t0 = time.perf_counter()
    rows = 0
    if mode == "generate":
        synthetic.write(folder, n_stays=n, seed=0)
        rows = sum(pq.ParquetFile(Path(folder) / f"{t}.parquet").metadata.num_rows for t in TABLES
                   if (Path(folder) / f"{t}.parquet").exists())
    else:  # reference: stream-copy the same Parquet tables
        out = Path(folder + "-copy")
        out.mkdir(exist_ok=True)
        for t in TABLES:
            src = Path(folder) / f"{t}.parquet"
            if not src.exists():
                continue
            f = pq.ParquetFile(src)
            with pq.ParquetWriter(out / src.name, f.schema_arrow) as w:
                for i in range(f.num_row_groups):
                    table = f.read_row_group(i)
                    w.write_table(table)
                    rows += table.num_rows
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_mb": peak_mb}))


def _run(mode: str, n: int, folder: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(n), folder], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    print(f"{'stays':>9} {'rows':>12} {'seconds':>8} {'stays/s':>9} {'rows/s':>11} {'peak MB':>8} "
          f"{'copy rows/s':>12} {'ratio':>6}")
    for n in args.sizes:
        folder = tempfile.mkdtemp(prefix="hf-gen-")
        try:
            gen = _run("generate", n, folder)
            ref = _run("copy", n, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(folder + "-copy", ignore_errors=True)
        gen_rate, ref_rate = gen["rows"] / gen["seconds"], ref["rows"] / ref["seconds"]
        print(f"{n:>9} {gen['rows']:>12} {gen['seconds']:>8.1f} {n / gen['seconds']:>9.0f} {gen_rate:>11.0f} "
              f"{gen['peak_mb']:>8.0f} {ref_rate:>12.0f} {gen_rate / ref_rate:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
