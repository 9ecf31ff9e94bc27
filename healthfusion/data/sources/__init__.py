"""Source readers: each turns raw files of one public database (or a user's extract in the same format) into a
:class:`~healthfusion.data.cohort.Cohort`. Register a reader in :data:`SOURCES` as ``name -> "module:function"``;
the function signature is ``build(path, *, task=None, progress=False, **options) -> Cohort``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable

from healthfusion.data.errors import SourceError

SOURCES: dict[str, str] = {
    "synthetic": "healthfusion.data.synthetic:build",
    "physionet2012": "healthfusion.data.sources.physionet2012:build",
    "medmnist": "healthfusion.data.sources.medmnist:build",
    "image_folder": "healthfusion.data.sources.image_folder:build",
    "notes": "healthfusion.data.sources.notes:build",
    "mtsamples": "healthfusion.data.sources.notes:build_mtsamples",
    "diabetes130": "healthfusion.data.sources.uci:build_diabetes130",
    "heart_disease": "healthfusion.data.sources.uci:build_heart_disease",
    "mimic4": "healthfusion.data.sources.mimic4:build",
    "eicu": "healthfusion.data.sources.eicu:build",
    "meds": "healthfusion.data.sources.meds:build",
    "fhir": "healthfusion.data.sources.fhir:build",
}


# cohort -> standard format writers: ``name -> "module:function"``; signature ``export(cohort, out, *, seed=0,
# progress=False) -> dict`` (a summary with what could not be written under "left_out").
EXPORTERS: dict[str, str] = {
    "meds": "healthfusion.data.sources.meds_export:export_meds",
}


def get_exporter(name: str) -> Callable:
    """The export function of format ``name``; unknown names raise :class:`SourceError` with a suggestion."""
    return _lookup(name, EXPORTERS, "export format")


def get_source(name: str) -> Callable:
    """The build function of source ``name``; unknown names raise :class:`SourceError` with a suggestion."""
    return _lookup(name, SOURCES, "source")


def _lookup(name: str, registry: dict[str, str], what: str) -> Callable:
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SourceError(f"Unknown {what} {name!r}; known: {', '.join(sorted(registry))}.{hint}")
    module, func = registry[name].split(":")
    return getattr(importlib.import_module(module), func)


def check_options(name: str, options: dict) -> None:
    """Raise :class:`SourceError` naming any key of ``options`` that source ``name``'s build function does not
    take (with a suggestion), instead of the ``TypeError`` the call would raise."""
    params = inspect.signature(get_source(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [p for p in params if p not in ("path", "task", "progress", "out")]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SourceError(f"Source {name!r} has no option {key!r}; its options: {', '.join(known) or 'none'}.{hint}")
