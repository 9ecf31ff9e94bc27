"""``healthfusion config schema KIND`` and ``healthfusion config check FILE``: the config kinds' JSON schemas and
a check of one config file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from healthfusion.cli.common import SET_OPTION, console, fail
from healthfusion.files import display_path


def register(app: typer.Typer) -> None:
    """Add the ``config`` command group to ``app``."""
    config_app = typer.Typer(help="Config files: JSON schemas and checks.", no_args_is_help=True)
    app.add_typer(config_app, name="config", help="Print a config kind's JSON schema or check a config file.")

    @config_app.command("schema")
    def schema(
        kind: str = typer.Argument(..., help="Config kind: train, transfer, multitask, pretrain or federate."),
        out: Path | None = typer.Option(None, "--out", "-o", help="JSON file to write (default: print it)."),
    ) -> None:
        """Print the JSON schema of a config kind: every field with its type, default, limits and description
        (editors use it to complete and check YAML files)."""
        from healthfusion.workflows.config_schema import config_schema

        try:
            text = json.dumps(config_schema(kind), indent=2)
        except ValueError as exc:
            fail(exc)
        if out is None:
            typer.echo(text)
        else:
            out.write_text(text + "\n")
            console.print(f"Wrote the {kind} config schema to [bold]{display_path(out)}[/]")

    @config_app.command("check")
    def check(
        file: Path = typer.Argument(..., help="Config file (YAML) to validate."),
        kind: str | None = typer.Option(None, help="Config kind (default: detected from the file's top-level keys)."),
        set_: list[str] | None = SET_OPTION,
    ) -> None:
        """Validate a config file (with its --set overrides) without running it; exit 2 naming the file and each
        offending field."""
        from healthfusion.workflows.config_schema import check_config

        try:
            found, _ = check_config(file, kind, set_ or ())
        except ValueError as exc:
            fail(exc)
        console.print(f"{file}: a valid [bold]{found}[/] config")
