"""M3H multitask benchmark: one multitask model vs single-task models (same encoders, same training budget) on
each config given, over the config's seeds, with the TIM from attention and from ablation.

Usage (from the repository root; about 25 minutes on 2 CPU cores for both configs)::

    nice -n 10 .venv/bin/python benchmarks/multitask_m3h.py \\
        benchmarks/configs/multitask-physionet2012.yaml benchmarks/configs/multitask-diabetes130.yaml \\
        --out runs/multitask-bench

Each config writes a run folder (see healthfusion.workflows.multitask) under ``--out``; this script prints and writes
``summary.md``: per task the main metric (multitask and single-task means over seeds), the relative improvement with
its 95% t-interval over seeds, the mean self-weight, and per dataset the mean relative improvement and the agreement
between the attention TIM and the ablation TIMs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402

from healthfusion.workflows.multitask import load_multitask_config, run_multitask  # noqa: E402


def _fmt(value: float, pct: bool = False) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:+.1%}" if pct else f"{value:.3f}"


def summarise(run_dir: Path) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = pd.read_csv(run_dir / "tasks.csv")
    lines = [f"### {metrics['name']} ({metrics['n']['train']}/{metrics['n']['val']}/{metrics['n']['test']} "
             f"train/val/test stays, seeds {metrics['seeds']}, {metrics['seconds'] / 60:.1f} min)", "",
             "| task | kind | metric | multitask (seed mean) | single-task (seed mean) | relative improvement [95% CI] "
             "| self-weight |", "|---|---|---|---|---|---|---|"]
    for r in table.to_dict(orient="records"):
        lines.append(f"| {r['task']} | {r['kind']} | {r['metric']} | {_fmt(r['multitask_mean'])} | "
                     f"{_fmt(r.get('single_mean'))} | {_fmt(r.get('rel_improvement'), True)} "
                     f"[{_fmt(r.get('rel_ci_low'), True)}, {_fmt(r.get('rel_ci_high'), True)}] | "
                     f"{r['self_weight']:.2f} |")
    lines.append("")
    for label, s in metrics["improvement"].items():
        lines.append(f"- mean relative improvement, {label.replace('_', ' ')}: {_fmt(s['mean'], True)} "
                     f"[{_fmt(s['ci_low'], True)}, {_fmt(s['ci_high'], True)}] (per seed: "
                     f"{', '.join(_fmt(v, True) for v in s['per_seed'])})")
    for name, agree in metrics["tim_agreement"].items():
        lines.append(f"- Spearman(attention TIM, {name}) over {agree['n_pairs']} task pairs: {_fmt(agree['spearman'])}")
    for name, c in metrics["clusters"].items():
        lines.append(f"- clustering {name}: silhouette {_fmt(c['silhouette'])}, sizes {c['sizes']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/multitask-bench"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. training.max_epochs=30 (YAML value); repeatable")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    parts = []
    for path in args.configs:
        config = load_multitask_config(path, args.set)
        config = config.model_copy(update={"out": args.out / config.name})
        start = time.time()
        run_dir = run_multitask(config, console=console)
        console.print(f"{config.name}: {time.time() - start:.0f} s -> {run_dir}")
        parts.append(summarise(run_dir))
        (args.out / "summary.md").write_text("\n".join(parts))
        print(parts[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
