"""Local Ray cluster vs one process: a partitioned MIMIC-IV build and a data-parallel fit, with the scaling model
of docs/scale.md checked against the 2-worker run.

Run on demand (not a test)::

    nice -n 10 .venv/bin/python benchmarks/ray_scale.py                       # 1M chartevents rows, 2 workers
    nice -n 10 .venv/bin/python benchmarks/ray_scale.py --rows 200000 --samples 5000   # a quick smoke run

Build: the MIMIC-IV demo's stays replicated ``--copies`` times with ``--rows`` synthetic chartevents rows
(``benchmarks/mimic_scale.py``'s generator), read as CSV.gz and then as its Parquet copy. In one process it times
(1) the whole build (``mimic4.build(out=...)``), (2) the event reduction for all stays (``partition_events``:
scan + reduce) and (3) the same for one stay (the scan). From CSV.gz the build is split by stays and every
partition reads the whole file, so the model predicts a build on N workers as
``build - events + scan + (events - scan) / N``; from Parquet it is split by row groups, each partition reading
1/N of the rows, so the model is ``build - events + events / N`` (the adding-up of the partitions' hourly sums
is not in it). Each is compared with the build through a local Ray cluster of ``--workers``, run twice (the
first run also starts Ray's worker processes; Ray's own start-up is timed apart). Cohorts are checked equal
(tables and accounting).

Training: an MLP (``--features`` inputs, hidden 256) on ``--samples`` planted rows, ``--epochs`` epochs, batch 64:
samples/s of one process with one torch thread (per core) against the Ray Train fit on ``--workers`` workers
(per-epoch time of worker 0 and the whole ``fit`` call with its start-up), and the weights compared.
Prints ratios against the single process measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DEMO = Path(os.environ.get("HEALTHFUSION_SHARED_DATA", HERE.parents[1] / "shared" / "data")) / "mimic_iv_demo"


class MLP(nn.Module):
    def __init__(self, n_in: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, batch):
        return {"logits": self.net(batch["static"])[:, 0]}


def _dataset(n: int, features: int, seed: int):
    from healthfusion.features.dataset import ArrayDataset

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1])))).astype(np.float32)
    return ArrayDataset({"static": x, "target": y})


def _median(work, repeat: int) -> float:
    """Median wall seconds of ``repeat`` runs of ``work()``."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(str)
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def build_benchmark(args, cluster, work: Path) -> None:
    from healthfusion.data.sources.convert import convert_to_parquet

    spec = importlib.util.spec_from_file_location("mimic_scale", HERE / "mimic_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = work / "db"
    made = bench.make_database(DEMO, root, args.rows, copies=args.copies)
    print(f"== build: {args.rows:,} chartevents rows, {made['icu_stays']:,} ICU stays", flush=True)
    _build_once(args, cluster, root, work / "csv", "CSV.gz")
    convert_to_parquet(root, work / "parquet")
    _build_once(args, cluster, work / "parquet", work / "pq", "Parquet")


def _build_once(args, cluster, root: Path, out: Path, label: str) -> None:
    from healthfusion.data.accounting import RowAccounting
    from healthfusion.data.sources import mimic4
    from healthfusion.data.sources.mimic4 import _stays
    from healthfusion.data.sources.mimic4_events import partition_events

    single = mimic4.build(root, out=out / "single")
    t_build = _median(lambda: mimic4.build(root, out=out / "single"), args.repeat)
    stays = _stays(root, RowAccounting(), 24.0)
    windows = stays[["subject_id", "stay_key", "stay_id", "intime"]].assign(start=-24.0, end=stays["los_hours"])
    t_events = _median(lambda: partition_events(root, windows, 24.0, "charttime"), args.repeat)
    t_scan = _median(lambda: partition_events(root, windows.head(1), 24.0, "charttime"), args.repeat)
    by_rows = label == "Parquet"  # split by row groups: no partition reads the whole file
    predicted = t_build - t_events + (t_events / cluster.n if by_rows else t_scan + (t_events - t_scan) / cluster.n)
    # the first run also starts Ray's worker processes and imports healthfusion in them: timed apart
    times = [_median(lambda: mimic4.build(root, out=out / "ray", partitions=cluster), 1),
             _median(lambda: mimic4.build(root, out=out / "ray", partitions=cluster), args.repeat)]
    parted = mimic4.build(root, out=out / "ray", partitions=cluster)
    same = single.accounting.to_dict() == parted.accounting.to_dict() and all(
        _normalised(getattr(single, t)).equals(_normalised(getattr(parted, t)))
        for t in ("stays", "static", "events", "codes", "labels"))
    rows = args.rows
    print(f"   {label}, one process: build {t_build:.1f} s ({rows / t_build:,.0f} chartevents rows/s, DuckDB on "
          f"all CPUs); events {t_events:.1f} s = scan {t_scan:.1f} s "
          f"({'split by row groups' if by_rows else 'paid by every partition'}) + reduce {t_events - t_scan:.1f} s")
    print(f"   {label}, Ray {cluster.n} workers: build {times[0]:.1f} s (first), {times[1]:.1f} s (second); "
          f"speed-up {t_build / times[1]:.2f}x; model predicted {predicted:.1f} s (second run / predicted "
          f"{times[1] / predicted:.2f}); medians of {args.repeat}; bound for any N: "
          f"{t_build / (t_build - t_events + (0 if by_rows else t_scan)):.2f}x")
    print(f"   same cohort (tables and row accounting): {same}; load average {os.getloadavg()[0]:.1f}", flush=True)


def train_benchmark(args, cluster) -> None:
    from healthfusion.training.config import TrainerConfig
    from healthfusion.training.trainer import Trainer

    train, val = _dataset(args.samples, args.features, 0), _dataset(2000, args.features, 1)
    config = TrainerConfig(max_epochs=args.epochs, batch_size=64, lr=1e-3, seed=0, patience=None, num_threads=1)
    torch.manual_seed(0)
    reference = MLP(args.features)
    history = Trainer(config).fit(reference, train, val)
    per_core = args.samples / float(np.median(history.epoch_seconds))
    torch.manual_seed(0)
    model = MLP(args.features)
    start = time.perf_counter()
    model, ray_history = cluster.fit(model, train, val, config)
    t_fit = time.perf_counter() - start
    per_epoch = float(np.median(ray_history.epoch_seconds))
    diff = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(),
                                                           reference.state_dict().values(), strict=True))
    print(f"== training: {args.samples:,} samples x {args.epochs} epochs, MLP {args.features}-256-256-1, batch 64")
    print(f"   one process (1 thread): {per_core:,.0f} samples/s; epoch {args.samples / per_core:.2f} s")
    print(f"   Ray Train, {cluster.n} workers: epoch {per_epoch:.2f} s ({args.samples / per_epoch:,.0f} samples/s, "
          f"{args.samples / per_epoch / cluster.n:,.0f} per worker); speed-up per epoch "
          f"{args.samples / per_core / per_epoch:.2f}x; whole fit call {t_fit:.1f} s (start-up included)")
    print(f"   val AUROC last epoch: one process {history.val_metric[-1]:.4f}, Ray {ray_history.val_metric[-1]:.4f}; "
          f"max weight difference {diff:.1e}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic chartevents rows")
    parser.add_argument("--copies", type=int, default=10, help="replicas of the demo's stays")
    parser.add_argument("--samples", type=int, default=20_000, help="training samples")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="local Ray workers")
    parser.add_argument("--repeat", type=int, default=3, help="build timings are medians of this many runs")
    parser.add_argument("--skip", choices=["build", "train"], help="skip one half")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(HERE.parent))
    import ray.cloudpickle

    from healthfusion.scale.ray import RayCluster

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get MLP by value
    work = Path(tempfile.mkdtemp(prefix="hf-ray-bench-"))
    try:
        start = time.perf_counter()
        with RayCluster(f"local:{args.workers}") as cluster:
            print(f"Ray local cluster of {cluster.n} workers started in {time.perf_counter() - start:.1f} s "
                  f"({os.cpu_count()} CPUs on this machine, load average {os.getloadavg()[0]:.1f})", flush=True)
            if args.skip != "build":
                build_benchmark(args, cluster, work)
            if args.skip != "train":
                train_benchmark(args, cluster)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
