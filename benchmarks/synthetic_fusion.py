"""Fusion vs single modalities on the synthetic cohort (run on demand, not a test).

Trains the hybrid model on each single modality and on all of them, with the same split, features and training
budget, and prints test AUROC with bootstrap CIs, plus each model's AUROC as a ratio of the fused model's (the
reference measured in the same run). The synthetic generator spreads the mortality signal across modalities, so a
model that fuses them should win.

    python benchmarks/synthetic_fusion.py --n-stays 5000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd  # noqa: E402

from healthfusion.data import synthetic  # noqa: E402
from healthfusion.workflows.config import RunConfig  # noqa: E402
from healthfusion.workflows.train import run_training  # noqa: E402

ARMS = {
    "time series only": ["ts"],
    "static only": ["static"],
    "image only": ["image"],
    "notes only": ["text"],
    "codes only": ["codes"],
    "all modalities (attention fusion)": ["ts", "static", "image", "text", "codes"],
    "all modalities (concat fusion)": ["ts", "static", "image", "text", "codes"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-stays", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="hf-fusion-"))
    rows = []
    for seed in args.seeds:
        cohort_dir = root / f"cohort-{seed}"
        synthetic.write(cohort_dir, n_stays=args.n_stays, seed=seed)
        for arm, modalities in ARMS.items():
            t0 = time.perf_counter()
            config = RunConfig(
                name=arm, out=root / f"seed{seed}" / arm.replace(" ", "_"),
                data={"cohort": cohort_dir, "label": "mortality", "split": {"seed": seed}},
                features={"modalities": modalities},
                model={"fusion": "concat" if "concat" in arm else "attention", "hidden": 32},
                training={"max_epochs": args.max_epochs, "patience": 6, "lr": 2e-3, "seed": seed},
                baselines=[], evaluation={"n_boot": 500},
            )
            run = run_training(config)
            table = pd.read_csv(run / "comparison.csv", index_col=0).loc["hybrid"]
            rows.append({"seed": seed, "model": arm, "auroc": table["auroc"], "ci_low": table["auroc_ci_low"],
                         "ci_high": table["auroc_ci_high"], "n_test": int(table["n"]),
                         "seconds": time.perf_counter() - t0})
            print(f"seed {seed}  {arm:36s} AUROC {table['auroc']:.3f} "
                  f"({table['auroc_ci_low']:.3f}-{table['auroc_ci_high']:.3f})", flush=True)
    frame = pd.DataFrame(rows)
    summary = frame.groupby("model", sort=False).agg(auroc_mean=("auroc", "mean"), auroc_sd=("auroc", "std"),
                                                     seconds=("seconds", "mean"))
    reference = summary.loc["all modalities (attention fusion)", "auroc_mean"]
    summary["ratio_to_fused"] = summary["auroc_mean"] / reference
    print()
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    best_single = summary.drop(index=[a for a in ARMS if a.startswith("all")])["auroc_mean"].max()
    print(f"\nfused (attention) AUROC {reference:.3f} vs best single modality {best_single:.3f}: "
          f"ratio {reference / best_single:.3f}; fusion {'wins' if reference > best_single else 'does NOT win'}")
    frame.to_csv(root / "fusion_benchmark.csv", index=False)
    print(f"per-run rows: {root / 'fusion_benchmark.csv'}")


if __name__ == "__main__":
    main()
