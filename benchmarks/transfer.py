"""Cross-domain transfer for in-hospital mortality: every strategy of ``healthfusion transfer`` on a real benchmark.

Datasets (``--dataset``):

* ``physionet2012``  PhysioNet 2012 sets A + B; source = CSRU, MICU, SICU, target = Coronary Care Unit
                     (``benchmarks/configs/transfer-physionet2012-ccu.yaml``; ``--target CSRU`` for the second target)
* ``eicu``           eICU demo; source = hospitals outside the West region, target = hospitals of the West
                     (``benchmarks/configs/transfer-eicu-region.yaml``)

The command-line options override the config's sizes, seeds, strategies and output folder, so the reduced and the
full protocol run from the same file:

    python benchmarks/transfer.py --dataset physionet2012                               # the config: 3 sizes x 3 seeds
    python benchmarks/transfer.py --dataset physionet2012 --sizes 50 100 250 500 1000 all --seeds 0 1 2 3 4
    python benchmarks/transfer.py --dataset eicu

Prints the summary (mean and 95% t-interval over seeds of the target-test AUROC) and the gains of each adaptation
strategy over the better of source-only and pooled, paired by seed; the run folder holds everything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from healthfusion.workflows.transfer import load_transfer_config, run_transfer  # noqa: E402

CONFIGS = {
    "physionet2012": Path(__file__).parent / "configs" / "transfer-physionet2012-ccu.yaml",
    "eicu": Path(__file__).parent / "configs" / "transfer-eicu-region.yaml",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(CONFIGS), default="physionet2012")
    p.add_argument("--config", type=Path, default=None, help="another transfer config (overrides --dataset)")
    p.add_argument("--sizes", nargs="+", default=None, help="labelled target sizes (integers or 'all')")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--strategies", nargs="+", default=None)
    p.add_argument("--target", nargs="+", default=None, help="target domain value(s), e.g. CSRU")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("healthfusion.workflows.transfer").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    config = load_transfer_config(args.config or CONFIGS[args.dataset])
    protocol = {}
    if args.sizes:
        protocol["sizes"] = [s if s == "all" else int(s) for s in args.sizes]
    if args.seeds:
        protocol["seeds"] = args.seeds
    update = {"threads": args.threads}
    if protocol:
        update["protocol"] = config.protocol.model_copy(update=protocol)
    if args.strategies:
        update["strategies"] = args.strategies
    if args.target:
        update["domain"] = config.domain.model_copy(update={"target": args.target})
        update["name"] = f"{config.name.split('-')[0]}-{'-'.join(args.target).lower()}"
    if args.out:
        update["out"] = args.out
    config = type(config).model_validate({**config.model_dump(), **update})
    started = time.time()
    run_dir = run_transfer(config, console=Console())
    pd.set_option("display.width", 200)
    summary = pd.read_csv(run_dir / "summary.csv")
    cols = ["strategy", "size", "n_seeds", "auroc", "auroc_seed_ci_low", "auroc_seed_ci_high", "auprc", "f1"]
    print(summary[cols].round(3).to_string(index=False))
    print(pd.read_csv(run_dir / "gains.csv").round(3).to_string(index=False))
    print(f"run folder {run_dir} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
