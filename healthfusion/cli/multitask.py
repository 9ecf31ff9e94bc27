"""``healthfusion multitask --config MT.yaml``: train a multimodal multitask model and report every task and the TIM."""

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

_COLUMNS = ("task", "kind", "metric", "n", "multitask", "multitask_ci_low", "multitask_ci_high", "ece", "cal_slope",
            "cal_intercept", "single_mean", "rel_improvement", "rel_ci_low", "rel_ci_high", "self_weight")


def register(app: typer.Typer) -> None:
    """Add the ``multitask`` command to ``app``."""

    @app.command()
    def multitask(
        config: Path = typer.Option(..., "--config", "-c", help="Multitask configuration (YAML); unknown keys are errors."),
        track: bool = typer.Option(False, "--track", help=TRACK_HELP),
        resume: bool = resume_option("run"),
        overwrite: bool = OVERWRITE_OPTION,
        set_: list[str] | None = SET_OPTION,
        out: Path | None = OUT_OPTION,
        quick: bool = QUICK_OPTION,
    ) -> None:
        """Train one model on many tasks (binary, multiclass, multilabel, regression, clustering); write the per-task
        table, the task-interdependence (TIM) heatmap and the saved model. Device, mixed precision and the other
        training options are the config's training: section, as in train."""
        from healthfusion.workflows.multitask import load_multitask_config, run_multitask

        run_dir = run_study(load_multitask_config, run_multitask, config, set_, out, quick, resume=resume, overwrite=overwrite)
        if track:
            track_finished(run_dir)
        table = suppress_small_rows(pd.read_csv(run_dir / "tasks.csv"), keep=_COLUMNS[:3])
        print_frame(console, table, columns=_COLUMNS,
                    title="Per-task test metrics (main metric; calibration of binary tasks; CIs: bootstrap for multitask, "
                          "over seeds for the rest)")
        summary = json.loads((run_dir / "metrics.json").read_text())["improvement"]
        for label, s in summary.items():
            console.print(f"Mean relative improvement over single-task models ({label.replace('_', ' ')}): "
                          f"{s['mean']:+.1%} (95% CI over seeds {s['ci_low']:+.1%} to {s['ci_high']:+.1%})")
        tim = pd.read_csv(run_dir / "tim_attention.csv", index_col=0)
        print_frame(console, tim.reset_index(names="task i \\ task j"),
                    title="TIM from attention: share of task i's representation taken from task j (diagonal: itself)")
        console.print(f"TIM heatmap: {display_path(run_dir / 'tim_attention.png')}")
        console.print(f"Run folder: [bold]{display_path(run_dir)}[/]")
