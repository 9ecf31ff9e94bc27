"""``healthfusion transfer --config TRANSFER.yaml``: source -> target transfer sweep (all strategies, sizes, seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer

from healthfusion.cli.common import (
    OUT_OPTION,
    OVERWRITE_OPTION,
    QUICK_OPTION,
    SET_OPTION,
    console,
    resume_option,
    run_study,
)
from healthfusion.cli.render import print_frame
from healthfusion.cli.track import TRACK_HELP, track_finished
from healthfusion.evaluation.disclosure import suppress_small_rows
from healthfusion.files import display_path

_SUMMARY = ("strategy", "size", "n_seeds", "n_test", "n_test_positive", "auroc", "auroc_seed_ci_low", "auroc_seed_ci_high", "ece", "cal_slope",
            "cal_intercept", "auprc", "f1")
_GAINS = ("size", "strategy", "bar", "gain", "gain_ci_low", "gain_ci_high", "n_seeds", "wins")


def register(app: typer.Typer) -> None:
    """Add the ``transfer`` command to ``app``."""

    @app.command()
    def transfer(
        config: Path = typer.Option(..., "--config", "-c", help="Transfer configuration (YAML); unknown keys are errors."),
        track: bool = typer.Option(False, "--track", help=TRACK_HELP),
        resume: bool = resume_option("sweep"),
        overwrite: bool = OVERWRITE_OPTION,
        set_: list[str] | None = SET_OPTION,
        out: Path | None = OUT_OPTION,
        quick: bool = QUICK_OPTION,
    ) -> None:
        """Train a BiLSTM risk model on a source domain and adapt it to a low-resource target (target-only,
        source-only, pooled, fine-tuning, DANN, MMD and their combination) over target sizes and seeds; write the
        results table, the learning curve, the domain-shift table, the models and SHAP of source vs adapted model.
        Device, mixed precision and the other training options are the config's training:/finetune: sections."""
        from healthfusion.workflows.transfer import load_transfer_config, run_transfer

        run_dir = run_study(load_transfer_config, run_transfer, config, set_, out, quick, resume=resume, overwrite=overwrite)
        if track:
            track_finished(run_dir)
        summary = suppress_small_rows(pd.read_csv(run_dir / "summary.csv"), keep=_SUMMARY[:3])
        print_frame(console, summary, columns=_SUMMARY,
                    title="Target test AUROC and calibration by strategy and labelled target size (mean, 95% CI "
                          "over seeds)")
        gains = suppress_small_rows(pd.read_csv(run_dir / "gains.csv"), keep=_GAINS[:3] + _GAINS[-2:])
        if len(gains):
            print_frame(console, gains, columns=_GAINS,
                        title="Gain over the better of source-only and pooled (AUROC, paired by seed)")
        shift = run_dir / "shift.json"
        if shift.is_file():
            info = json.loads(shift.read_text())
            console.print(f"Domain shift: a classifier tells source from target stays with AUROC "
                          f"{info['domain_auroc']:.3f} ({info['domain_auroc_ci_low']:.3f}-"
                          f"{info['domain_auroc_ci_high']:.3f}); per-variable differences in {display_path(run_dir / 'shift.csv')}")
        console.print(f"Learning curve: {display_path(run_dir / 'learning_curve.png')}")
        console.print(f"Run folder: [bold]{display_path(run_dir)}[/]")
