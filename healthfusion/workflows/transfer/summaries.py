"""Summaries of a transfer run: per-strategy tables over seeds, gains over the baselines, the learning curve, shift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from healthfusion.evaluation.bootstrap import seed_interval
from healthfusion.evaluation.shift import domain_classifier_auroc, stay_summaries, variable_shift
from healthfusion.features import batch as B
from healthfusion.files import atomic_path
from healthfusion.workflows.transfer.config import (
    ADAPTATION_STRATEGIES,
    BASELINE_STRATEGIES,
    METRICS,
    STRATEGIES,
    UNBOUNDED_METRICS,
)
from healthfusion.workflows.transfer.protocol import Rows


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and size: number of seeds, the smallest target test set over seeds (``n_test``,
    ``n_test_positive``: what small-cell suppression judges the row by) and, for each metric, mean, sd and a 95%
    t-interval over seeds."""
    rows = []
    ok = results[results["status"] == "ok"]
    for (strategy, size), group in ok.groupby(["strategy", "size"], sort=False):
        row: dict[str, Any] = {"strategy": strategy, "size": size, "n_seeds": len(group),
                               "n_labelled": float(group["n_labelled"].mean()), **_smallest_test(group)}
        for m in METRICS:
            bounds = None if m in UNBOUNDED_METRICS else (0.0, 1.0)
            mean, low, high = seed_interval(group[m].to_numpy(dtype=float), bounds=bounds)
            row.update({m: mean, f"{m}_sd": float(group[m].std(ddof=1)) if len(group) > 1 else float("nan"),
                        f"{m}_seed_ci_low": low, f"{m}_seed_ci_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def _smallest_test(group: pd.DataFrame) -> dict[str, int]:
    return {col: int(group[col].min()) for col in ("n_test", "n_test_positive") if col in group.columns}


def gains(results: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Each adaptation strategy minus the bar (the better, by mean over seeds, of source-only and pooled), paired
    by seed, per size: mean difference and 95% t-interval over seeds, and the smallest target test set over seeds
    (``n_test``, ``n_test_positive``)."""
    ok = results[results["status"] == "ok"]
    rows = []
    for size, group in ok.groupby("size", sort=False):
        wide = group.pivot_table(index="seed", columns="strategy", values=metric)
        bars = [s for s in BASELINE_STRATEGIES if s in wide.columns]
        if not bars:
            continue
        bar = max(bars, key=lambda s: wide[s].mean())
        for strategy in [s for s in (*ADAPTATION_STRATEGIES, "target_only") if s in wide.columns]:
            diff = (wide[strategy] - wide[bar]).to_numpy(dtype=float)
            mean, low, high = seed_interval(diff, bounds=(-1.0, 1.0))
            rows.append({"size": size, "strategy": strategy, "bar": bar, f"{metric}_bar": float(wide[bar].mean()),
                         f"{metric}_strategy": float(wide[strategy].mean()), "gain": mean, "gain_ci_low": low,
                         "gain_ci_high": high, "n_seeds": int((~np.isnan(diff)).sum()),
                         "wins": int((diff > 0).sum()), **_smallest_test(group)})
    return pd.DataFrame(rows)


def plot_learning_curve(summary: pd.DataFrame, path: Path, metric: str = "auroc", title: str = "") -> Path:
    """AUROC (mean over seeds, 95% t-interval bars) against the labelled target size, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sizes = summary.assign(n=summary["n_labelled"]).sort_values("n")
    for strategy in [s for s in STRATEGIES if s in set(summary["strategy"])]:
        part = sizes[sizes["strategy"] == strategy]
        err = np.vstack([part[metric] - part[f"{metric}_seed_ci_low"], part[f"{metric}_seed_ci_high"] - part[metric]])
        style = "--" if strategy in BASELINE_STRATEGIES or strategy == "target_only" else "-"
        ax.errorbar(part["n"], part[metric], yerr=np.nan_to_num(err), marker="o", capsize=3, linestyle=style,
                    label=strategy)
    ax.set_xscale("log")
    ticks = sorted({int(round(n)) for n in sizes["n"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled target stays (train + validation)")
    ax.set_ylabel(f"target test {metric.upper()} (mean over seeds, 95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def measure_shift(data: Rows, source_ids: list[str], target_ids: list[str], variables: list[str],
                  static_names: list[str] | None, seed: int) -> tuple[dict, pd.DataFrame]:
    """Domain-classifier AUROC (source vs target pool) and the per-variable shift table."""

    def summaries(ids):
        d = data(ids)
        static = d[B.STATIC] if B.STATIC in d else None
        names = [f"static:{n}" for n in static_names] if static is not None else None
        return stay_summaries(d[B.TS_VALUES], d[B.TS_MASK], variables, static, names)

    src, tgt = summaries(source_ids), summaries(target_ids)
    ci = domain_classifier_auroc(src, tgt, seed=seed)
    return ({"domain_auroc": ci.value, "domain_auroc_ci_low": ci.ci_low, "domain_auroc_ci_high": ci.ci_high,
             "n_source": len(source_ids), "n_target": len(target_ids)}, variable_shift(src, tgt))


