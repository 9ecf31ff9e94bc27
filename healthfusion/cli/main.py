"""The ``healthfusion`` command line. Thin: parse, call the library, print."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning OpenMP threads stall 2-core hosts

import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from healthfusion.cli.render import print_frame  # noqa: E402

app = typer.Typer(
    help="healthfusion: validated, explainable, transferable multimodal clinical risk models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cohort_app = typer.Typer(help="Build and inspect cohorts.", no_args_is_help=True)
app.add_typer(cohort_app, name="cohort", help="Build cohorts from raw sources and describe them.")
console = Console()


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library log messages.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def demo(
    out: Path | None = typer.Option(None, help="Run folder (default: runs/demo-<timestamp>)."),
    n_stays: int = typer.Option(2000, help="Synthetic stays to generate."),
    seed: int = typer.Option(0, help="Random seed for data, split and training."),
    max_epochs: int = typer.Option(30, help="Maximum training epochs (early stopping usually ends sooner)."),
) -> None:
    """Run the whole pipeline on the embedded synthetic cohort: data, features, fused model, baseline, metrics."""
    from healthfusion.workflows.demo import run_demo

    try:
        result = run_demo(out=out, n_stays=n_stays, seed=seed, max_epochs=max_epochs, console=console)
    except ValueError as exc:
        _fail(exc)
    print_frame(console, result["table"], title="Test-set metrics (95% bootstrap CI)")
    console.print(f"Run folder: [bold]{result['run_dir']}[/]  ({result['seconds']:.0f} s)")


@cohort_app.command("build")
def cohort_build(
    source: str = typer.Option(..., help="Source reader, e.g. synthetic, physionet2012, mimic4, eicu."),
    path: Path | None = typer.Option(None, help="Raw data: the source's folder or file (not used by synthetic)."),
    out: Path = typer.Option(..., help="Cohort folder to write."),
    task: str | None = typer.Option(None, help="Task of the source (its default when omitted)."),
) -> None:
    """Read raw files of a source into a cohort folder and print its row accounting."""
    from healthfusion.workflows.cohorts import build_cohort

    try:
        cohort = build_cohort(source=source, path=path, out=out, task=task, console=console)
    except ValueError as exc:
        _fail(exc)
    print_frame(console, cohort.accounting.to_frame(), title="Row accounting")
    console.print(f"Wrote {len(cohort)} stays to [bold]{out}[/]")


@cohort_app.command("describe")
def cohort_describe(path: Path = typer.Argument(..., help="Cohort folder.")) -> None:
    """Counts, label prevalence, missingness per variable and per domain of a cohort folder."""
    from healthfusion.data.cohort import Cohort
    from healthfusion.workflows.describe import describe_cohort

    try:
        tables = describe_cohort(Cohort.load(path))
    except ValueError as exc:
        _fail(exc)
    for name, frame in tables.items():
        print_frame(console, frame, title=name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
