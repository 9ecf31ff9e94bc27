"""``healthfusion federate --config FL.yaml``: federated training across sites (simulation, or server / site
processes of a deployment)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer

from healthfusion.cli.common import console, fail
from healthfusion.cli.render import print_frame
from healthfusion.files import display_path

_SUMMARY = ("setting", "epsilon", "temperature", "mean_client_accuracy", "auroc", "auroc_ci_low", "auroc_ci_high", "ece",
            "cal_slope", "cal_intercept", "n_test")


def register(app: typer.Typer) -> None:
    """Add the ``federate`` command to ``app``."""

    @app.command()
    def federate(
        config: Path = typer.Option(..., "--config", "-c", help="Federated run configuration (YAML); unknown keys "
                                    "are errors."),
        role: str = typer.Option("simulate", help="simulate: every site in this process; server: the Flower "
                                 "server of a deployment; site: one site's client (with --site)."),
        site: str | None = typer.Option(None, help="With --role site: the site this process trains (a value of "
                                        "federated.site_column)."),
        address: str = typer.Option("127.0.0.1:8080", help="host:port the server listens on / sites connect to."),
    ) -> None:
        """Train the hybrid across sites without pooling their stays (FedAvg, FedProx, FedAdagrad/Adam/Yogi,
        median or trimmed mean, optional local fine-tuning); write the global model (loadable by `predict`),
        per-round participation, per-site metrics and summary.csv (federated vs pooled vs local-only)."""
        if role not in ("simulate", "server", "site"):
            fail(ValueError(f"--role must be simulate, server or site; got {role!r}."))
        from healthfusion.workflows.federate import load_federate_config, run_federate

        try:
            run_dir = run_federate(load_federate_config(config), console=console, role=role, site=site,
                                   address=address)
        except (ValueError, ImportError) as exc:
            fail(exc)
        if role == "site":
            console.print("Site finished: the server ended the run.")
            return
        summary = pd.read_csv(run_dir / "summary.csv")
        print_frame(console, summary, columns=[c for c in _SUMMARY if c in summary.columns],
                    title="Mean over sites of test accuracy; AUROC and calibration over all sites' test stays "
                          "(bootstrap 95% CI)")
        console.print(f"Run folder: [bold]{display_path(run_dir)}[/]")
