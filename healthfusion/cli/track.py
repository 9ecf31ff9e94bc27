"""``healthfusion track RUN_DIR``: record a finished run folder in MLflow."""

from __future__ import annotations

from pathlib import Path

import typer

from healthfusion.cli.common import console, fail

TRACK_HELP = ("Record the finished run in MLflow (local SQLite store beside the run folder; "
              "`healthfusion track` for other stores). Needs healthfusion[track].")


def track_finished(run_dir: Path) -> None:
    """The ``--track`` option of run commands: record ``run_dir`` in the default MLflow store and say where."""
    from healthfusion.tracking import default_uri, track_run

    try:
        with console.status("Logging the run to MLflow ..."):
            run_id = track_run(run_dir)
    except ValueError as exc:
        fail(exc)
    console.print(f"MLflow run [bold]{run_id}[/] in {default_uri(run_dir)}")


def register(app: typer.Typer) -> None:
    """Add the ``track`` command to ``app``."""

    @app.command()
    def track(
        run_dir: Path = typer.Argument(..., help="Run folder written by `healthfusion train`, `transfer`, "
                                                 "`multitask` or `pretrain`."),
        uri: str | None = typer.Option(None, help="MLflow tracking URI (default: sqlite:///<run parent>/mlflow.db)."),
        experiment: str | None = typer.Option(None, help="Experiment name (default: the config's name)."),
        log_model: bool = typer.Option(True, help="Include the saved model/ folder in the artefacts."),
    ) -> None:
        """Record a run in MLflow: its config as params, comparison.csv metrics with their CIs, every file of the
        folder (plots, report, model) as artefacts, and the requirements (torch as a range). Needs
        `pip install "healthfusion[track]"`."""
        from healthfusion.tracking import default_uri, track_run

        try:
            with console.status("Logging the run to MLflow ..."):
                run_id = track_run(run_dir, uri=uri, experiment=experiment, log_model=log_model)
        except ValueError as exc:
            fail(exc)
        console.print(f"MLflow run [bold]{run_id}[/] in {uri or default_uri(run_dir)}")
