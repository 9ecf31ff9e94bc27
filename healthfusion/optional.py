"""Optional dependencies: the one way a module imports a package that an extra installs.

The core of healthfusion imports without Flower, Opacus, Ray, FastAPI, MLflow, Optuna, MEDS, fhir.resources or
onnxruntime. Each adapter module that needs one calls :func:`require` when it first needs it (never at import
time), and a missing package becomes a :class:`MissingExtraError` whose message names the extra that installs it:

>>> require("a_package_that_is_not_installed", extra="serve", needed_for="The scoring service")
Traceback (most recent call last):
...
healthfusion.optional.MissingExtraError: The scoring service needs the a_package_that_is_not_installed package: \
pip install "healthfusion[serve]"

The CLI turns the error into one line and exit status 2, like any other input or set-up error.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra``, e.g. ``pip install "healthfusion[dp]"``."""
    return f'pip install "healthfusion[{extra}]"'


def require(module: str, *, extra: str, needed_for: str) -> ModuleType:
    """Import ``module`` (a dotted name) or raise :class:`MissingExtraError`.

    Args:
        module: the module to import, e.g. ``"opacus"`` or ``"fhir.resources.R4B"``.
        extra: the healthfusion extra that installs it, e.g. ``"dp"``.
        needed_for: what needs it, as the subject of a sentence, e.g. ``"Differential privacy"``.

    Raises:
        MissingExtraError: the package (or one it needs) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = (exc.name or module).split(".")[0]
        raise MissingExtraError(f"{needed_for} needs the {package} package: {install_hint(extra)}") from exc
