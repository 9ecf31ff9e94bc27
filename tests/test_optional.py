"""The one mechanism for optional packages: a missing one names its extra, and the CLI exits 2 with that line."""

import sys

import pytest
import typer
from typer.testing import CliRunner

from healthfusion.cli.common import ReadErrorsGroup
from healthfusion.optional import MissingExtraError, install_hint, require


def test_require_returns_an_installed_module():
    assert require("json", extra="serve", needed_for="Anything").dumps([1]) == "[1]"


def test_a_missing_package_names_the_extra_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # an import of a module set to None fails like a missing one
    with pytest.raises(MissingExtraError, match=r'Experiment tracking needs the mlflow package: '
                                                r'pip install "healthfusion\[track\]"'):
        require("mlflow", extra="track", needed_for="Experiment tracking")
    assert issubclass(MissingExtraError, ImportError)  # callers that catch ImportError still do


def test_a_missing_dependency_of_a_submodule_is_named_by_its_top_package(monkeypatch):
    for name in ("fhir", "fhir.resources", "fhir.resources.R4B"):  # as if never installed, even after FHIR tests
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match="needs the fhir package"):
        require("fhir.resources.R4B", extra="fhir", needed_for="Reading FHIR")


def test_adapters_use_the_shared_mechanism(monkeypatch):
    from healthfusion import tracking
    from healthfusion.workflows import search

    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingExtraError, match=r"healthfusion\[track\]"):
        tracking._mlflow()
    with pytest.raises(MissingExtraError, match=r"healthfusion\[tune\]"):
        search._optuna()


def test_the_cli_turns_a_missing_extra_into_one_line_and_exit_2():
    app = typer.Typer(cls=ReadErrorsGroup)

    @app.command()
    def needs_it() -> None:
        require("a_package_that_is_not_installed", extra="scale", needed_for="Running on Ray")

    @app.command()
    def other() -> None:  # a group of two commands, as the real CLI is
        pass

    result = CliRunner().invoke(app, ["needs-it"])
    assert result.exit_code == 2
    assert install_hint("scale") in result.output
    assert "Traceback" not in result.output
