"""``healthfusion report RUN_DIR`` and ``healthfusion explain RUN_DIR``: the HTML report and the explanations of a
run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from healthfusion.cli.common import console, fail
from healthfusion.files import display_path


def register(app: typer.Typer) -> None:
    """Add the ``report`` and ``explain`` commands to ``app``."""

    @app.command()
    def report(
        run_dir: Path = typer.Argument(..., help="Run folder written by `healthfusion train`, `demo`, `transfer` or `multitask`."),
        out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default: RUN_DIR/report.html)."),
        recompute_audit: bool = typer.Option(False, help="Recompute calibration, subgroup and impact results."),
        explain: bool = typer.Option(False, help="Compute explanations first when the run folder has none "
                                                 "(reads the run's data)."),
        identifiers: bool | None = typer.Option(None, "--identifiers/--no-identifiers",
                                                help="Show stay ids in the per-stay explanations, for internal use "
                                                     "only (default: the run config's evaluation.report_identifiers, "
                                                     "false: stays are numbered)."),
    ) -> None:
        """Write one self-contained HTML report (model card with the TRIPOD+AI items, metrics with CIs,
        calibration, subgroups, explanations, impact, limitations) that opens offline and prints cleanly. It shows
        no stay id (unless --identifiers), no absolute path and no count or group statistic under 10."""
        from healthfusion.workflows.report import build_report

        try:
            with console.status("Building the report ..."):
                path = build_report(run_dir, out, recompute_audit=recompute_audit, explain=explain,
                                    identifiers=identifiers)
        except ValueError as exc:
            fail(exc)
        console.print(f"Report: [bold]{display_path(path)}[/] ({path.stat().st_size / 1e6:.1f} MB, self-contained)")

    @app.command()
    def explain(
        run_dir: Path = typer.Argument(..., help="Run folder written by `healthfusion train`."),
        n_explain: int = typer.Option(48, help="Test stays to explain."),
        seed: int = typer.Option(0, help="Seed of the stay and background draws."),
    ) -> None:
        """Explain a run's hybrid model: GradientShap per variable, top contributors per stay, attention over
        time, modality contributions and image saliency, written to RUN_DIR/explanations/."""
        from healthfusion.workflows.explain import explain_run

        try:
            summary = explain_run(run_dir, n_explain=n_explain, seed=seed, console=console)
        except ValueError as exc:
            fail(exc)
        top = summary.get("top_features", {})
        if top:
            console.print("Most important inputs (mean |attribution|): "
                          + ", ".join(f"{k} {v:.3f}" for k, v in list(top.items())[:5]))
        console.print(f"Explanations: [bold]{display_path(Path(run_dir) / 'explanations')}[/]")
