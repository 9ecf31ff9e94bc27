"""The ``healthfusion`` command line. Thin: parse, call the library, print."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads stall 2-core hosts

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import typer  # noqa: E402

from healthfusion.cli.common import (  # noqa: E402
    OUT_OPTION,
    OVERWRITE_OPTION,
    QUICK_OPTION,
    SET_OPTION,
    ReadErrorsGroup,
    console,
    fail,
    load_config,
    parse_options,
)
from healthfusion.cli.render import print_frame  # noqa: E402
from healthfusion.files import display_path, write_csv  # noqa: E402
from healthfusion.scale.cluster import HELP as CLUSTER_HELP  # noqa: E402

app = typer.Typer(
    cls=ReadErrorsGroup,
    help="healthfusion: validated, explainable, transferable multimodal clinical risk models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cohort_app = typer.Typer(help="Build and inspect cohorts.", no_args_is_help=True)
app.add_typer(cohort_app, name="cohort", help="Build cohorts from raw sources and describe them.")


def _print_version(value: bool) -> None:
    if value:
        from healthfusion._version import __version__

        console.print(f"healthfusion {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library log messages."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the healthfusion version and exit."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


_OPTION_HELP = ("A source option KEY=VALUE, repeatable (e.g. notes: prediction_time=24; physionet2012: hours=24, "
                "outcomes=PATH); the same keys as a run config's data.options.")


@app.command()
def demo(
    out: Path | None = typer.Option(None, help="Run folder (default: runs/demo-<timestamp>)."),
    n_stays: int = typer.Option(2000, help="Synthetic stays to generate."),
    seed: int = typer.Option(0, help="Random seed for data, split and training."),
    max_epochs: int = typer.Option(30, help="Maximum training epochs (early stopping usually ends sooner)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear a non-empty run folder first (default: refuse it)."),
) -> None:
    """Run the whole pipeline on the embedded synthetic cohort: data, features, fused model, baseline, metrics."""
    from healthfusion.workflows.demo import run_demo

    try:
        result = run_demo(out=out, n_stays=n_stays, seed=seed, max_epochs=max_epochs, console=console,
                          overwrite=overwrite)
    except ValueError as exc:
        fail(exc)
    print_frame(console, result["table"], title="Test-set metrics (95% bootstrap CI)")
    console.print(f"Run folder: [bold]{display_path(result['run_dir'])}[/]  ({result['seconds']:.0f} s)")


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Run configuration (YAML); unknown keys are errors."),
    overwrite: bool = OVERWRITE_OPTION,
    set_: list[str] | None = SET_OPTION,
    out: Path | None = OUT_OPTION,
    quick: bool = QUICK_OPTION,
    cluster: str | None = typer.Option(None, "--cluster", help=CLUSTER_HELP + " The hybrid network(s) train "
                                       "data-parallel with Ray Train, one process per worker."),
) -> None:
    """Train the hybrid model (or, with an `ensemble` section, the hybrid + boosting ensemble) and the baselines on
    one split; write the run folder (new or empty) with the model, metrics and plots."""
    from healthfusion.workflows.config import load_run_config
    from healthfusion.workflows.train import run_training

    try:
        run_dir = run_training(load_config(load_run_config, config, set_, out, quick), console=console,
                               overwrite=overwrite, cluster=cluster)
    except ValueError as exc:
        fail(exc)
    _print_run(run_dir)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run folder written by `healthfusion train`."),
    split: str = typer.Option("test", help="Split of predictions.csv to evaluate."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the 95% CIs."),
) -> None:
    """Recompute the comparison table (with CIs) and ROC/PR curves of a run folder's predictions."""
    from healthfusion.workflows.evaluate import evaluate_predictions

    try:
        evaluate_predictions(run_dir, split=split, n_boot=n_boot)
    except ValueError as exc:
        fail(exc)
    _print_run(run_dir)


@app.command()
def predict(
    model: Path = typer.Option(..., help="Saved model folder (e.g. RUN_DIR/model)."),
    source: str = typer.Option(..., help="Source reader of the raw files, e.g. physionet2012, medmnist."),
    path: Path = typer.Option(..., help="Raw files to score: the source's folder or file."),
    out: Path = typer.Option(..., help="CSV to write: id, probability, risk group, status."),
    split: str | None = typer.Option(None, help="Named split of the source, e.g. test for a MedMNIST .npz."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=_OPTION_HELP + " Options the model was "
                                            "trained with are applied from the model folder; one that contradicts "
                                            "them is an error."),
) -> None:
    """Score new patients from raw files with a saved model folder.

    Everything that defines how the model sees a patient comes from the folder (reader options such as the
    prediction window, preprocessing, calibrator, risk-group threshold); every file is checked against its
    model.json first.
    """
    from healthfusion.data.sources import check_options
    from healthfusion.workflows.predict import predict_source

    options = parse_options(option)
    try:
        check_options(source, options)
        frame = predict_source(model, source, path, split=split, **options)
    except ValueError as exc:
        fail(exc)
    write_csv(frame, out, index=False)  # atomically: a reader never sees half a file
    counts = frame["status"].value_counts().to_dict()
    console.print(frame.attrs["model"], highlight=False, soft_wrap=True)
    console.print(f"Wrote {len(frame)} rows to [bold]{display_path(out)}[/] ({counts})")
    from healthfusion.workflows.predict import external_validation

    validated = external_validation(frame, threshold=frame.attrs["threshold"])
    if validated is not None:
        print_frame(console, validated[0], title=validated[1])


def _print_run(run_dir: Path) -> None:
    import pandas as pd

    from healthfusion.workflows.evaluate import display_comparison, display_differences

    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    shown, title = display_comparison(pd.read_csv(run_dir / "comparison.csv", index_col=0))
    if metrics.get("test_set") is False:
        title = title.replace("Test-set", "Validation-set") + ": no test set, optimistic"
    print_frame(console, shown, title=title)
    if (run_dir / "comparison_difference.csv").is_file():
        shown, title = display_differences(pd.read_csv(run_dir / "comparison_difference.csv", index_col=0))
        print_frame(console, shown, title=title)
    if (run_dir / "comparison_by_test_set.csv").is_file():
        by_set = pd.read_csv(run_dir / "comparison_by_test_set.csv")
        print_frame(console, by_set[["test_set", "model", "n", "auroc", "auroc_ci_low", "auroc_ci_high", "auprc"]]
                    .round(3), title="Each external test set on its own (AUROC, 95% bootstrap CI)")
    if (run_dir / "challenge2012.csv").is_file():
        print_frame(console, pd.read_csv(run_dir / "challenge2012.csv").round(3),
                    title="PhysioNet Challenge 2012 scores (event 1 higher, event 2 H lower is better)")
    console.print(f"Run folder: [bold]{display_path(run_dir)}[/]")


@cohort_app.command("build")
def cohort_build(
    source: str = typer.Option(..., help="Source reader, e.g. synthetic, physionet2012, mimic4, eicu."),
    path: Path | None = typer.Option(None, help="Raw data: the source's folder or file (not used by synthetic)."),
    out: Path = typer.Option(..., help="Cohort folder to write."),
    task: str | None = typer.Option(None, help="Task of the source (its default when omitted); for meds, the "
                                    "task_labels/<task>/ folder to read (all tasks there when omitted); for fhir, "
                                    "condition:<code prefix> or in_hospital_death."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=_OPTION_HELP),
    cluster: str | None = typer.Option(None, "--cluster", help=CLUSTER_HELP + " The event tables are reduced "
                                       "by one Ray task per worker (mimic4, eicu): each reads its own Parquet row "
                                       "groups (mimic4 with every event table in Parquet, see cohort convert), else "
                                       "each reduces a group of patients' stays; same folder and row accounting as "
                                       "without it."),
) -> None:
    """Read raw files of a source into a cohort folder and print its row accounting."""
    from healthfusion.workflows.cohorts import build_cohort

    options = parse_options(option)
    try:
        cohort = build_cohort(source=source, path=path, out=out, task=task, console=console, cluster=cluster,
                              **options)
    except ValueError as exc:
        fail(exc)
    print_frame(console, cohort.accounting.to_frame(), title="Row accounting")
    console.print(f"Wrote {len(cohort)} stays to [bold]{display_path(out)}[/]")


@cohort_app.command("export")
def cohort_export(
    cohort: Path = typer.Argument(..., help="Cohort folder (from `healthfusion cohort build`)."),
    format: str = typer.Option(..., "--format", help="Standard format to write: meds."),
    out: Path = typer.Option(..., help="Folder to create (must be empty or absent)."),
    seed: int = typer.Option(0, help="Seed of the patient-level train/tuning/held_out split written with the data."),
) -> None:
    """Write a cohort in a standard format: MEDS data shards, metadata/ (codes, subject splits, dataset) and one
    label shard per label under task_labels/ (see docs/formats.md)."""
    from healthfusion.workflows.cohorts import export_cohort

    try:
        summary = export_cohort(cohort, out, format, seed=seed, console=console)
    except ValueError as exc:
        fail(exc)
    console.print(f"Wrote {summary['stays']} stays of {summary['subjects']} subjects ({summary['data_rows']} data rows) "
                  f"and label shards {summary['labels']} to [bold]{out}[/]")
    for what, n in summary["left_out"].items():
        console.print(f"[yellow]left out:[/] {n} {what} (not representable in {format})")


@cohort_app.command("describe")
def cohort_describe(path: Path = typer.Argument(..., help="Cohort folder.")) -> None:
    """Counts, label prevalence, missingness per variable and per domain of a cohort folder."""
    from healthfusion.data.cohort import Cohort
    from healthfusion.workflows.describe import describe_cohort

    try:
        tables = describe_cohort(Cohort.load(path))
    except ValueError as exc:
        fail(exc)
    for name, frame in tables.items():
        print_frame(console, frame, title=name)


@cohort_app.command("convert")
def cohort_convert(
    path: Path = typer.Option(..., help="Folder of raw CSV tables (.csv, .csv.gz), e.g. the MIMIC-IV root."),
    out: Path = typer.Option(..., help="Folder for the Parquet tables, same layout (may be --path itself)."),
) -> None:
    """Convert raw CSV tables to Parquet once; `cohort build` then reads the Parquet copy, many times faster.

    Known tables (MIMIC-IV, eICU) are read with declared column types: identifier and code columns (NDC, DRG,
    ICD codes, provider ids) stay text, so leading zeros are kept. Other columns are typed from all their values.
    """
    from healthfusion.data.sources.convert import convert_to_parquet

    try:
        with console.status(f"Converting the CSV tables under {path} ..."):
            written = convert_to_parquet(path, out, progress=True)
    except ValueError as exc:
        fail(exc)
    console.print(f"Wrote {len(written)} Parquet tables to [bold]{display_path(out)}[/]")


# Commands with their own module register themselves here: each module defines ``register(app)``.
_COMMAND_MODULES: tuple[str, ...] = ("multitask", "report", "pretrain", "transfer", "config", "track", "serve",
                                       "alerts", "federate")


def _register_commands() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f"healthfusion.cli.{name}").register(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
