"""``healthfusion alerts MODEL_DIR --path RAW --out DIR``: the model as an hourly early-warning score vs NEWS2."""

from __future__ import annotations

from pathlib import Path

import typer

from healthfusion.cli.common import console, fail
from healthfusion.cli.render import print_frame
from healthfusion.files import display_path

_COLUMNS = ("score", "operating_point", "threshold", "n_alerts", "alerts_per_patient_day", "ppv", "sensitivity",
            "lead_time_median", "n_stays", "n_positive")


def register(app: typer.Typer) -> None:
    """Add the ``alerts`` command to ``app``."""

    @app.command()
    def alerts(
        model_dir: Path = typer.Argument(..., help="Saved model folder of a binary outcome (e.g. RUN_DIR/model)."),
        path: Path = typer.Option(..., help="Raw files of the model's source with the outcome (e.g. set-b.tar.gz)."),
        out: Path = typer.Option(..., help="Folder for hourly_scores.csv, alerts.csv, curves.csv, alerts.png."),
        start: float = typer.Option(6.0, min=0.0, help="First scoring hour since admission."),
        end: float = typer.Option(48.0, min=0.0, help="Last scoring hour (the end of the window)."),
        step: float = typer.Option(1.0, min=0.1, help="Hours between scorings."),
        n: int | None = typer.Option(None, min=1, help="Only the first N stays of the source."),
        budget: float = typer.Option(1.0, min=0.0, help="Alert budget: alerts per patient-day at the operating point."),
        lockout: float = typer.Option(4.0, min=0.0, help="Hours after an alert during which the stay cannot re-alert."),
        n_boot: int = typer.Option(1000, min=1, help="Bootstrap resamples of stays for the 95% intervals."),
    ) -> None:
        """Score every stay every STEP hours from START to END with the model and with NEWS2 (from the vitals),
        and compare them as early-warning systems: alerts per patient-day, PPV, sensitivity and lead time at the
        alert budget, and NEWS2's PPV at the model's sensitivity."""
        from rich.progress import Progress

        from healthfusion.models.base import ModelLoadError
        from healthfusion.workflows.alerts import evaluate_alerts

        try:
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("Scoring hours", total=None)
                table = evaluate_alerts(model_dir, path, out, start=start, end=end, step=step, n_stays=n,
                                        budget=budget, lockout=lockout, n_boot=n_boot,
                                        progress=lambda done, total: bar.update(task, completed=done, total=total))
        except (ValueError, ModelLoadError) as exc:
            fail(exc)
        shown = table.copy()
        for metric in ("alerts_per_patient_day", "ppv", "sensitivity", "lead_time_median"):
            shown[metric] = [f"{v:.3g} ({lo:.3g} to {hi:.3g})" for v, lo, hi in
                             zip(table[metric], table[f"{metric}_ci_low"], table[f"{metric}_ci_high"], strict=True)]
        print_frame(console, shown, columns=_COLUMNS,
                    title=f"Early warning: the model vs NEWS2 (95% CI over stays, {n_boot} resamples)")
        console.print(f"Figures and tables: [bold]{display_path(out)}[/] (alerts.png)")
