"""Source readers: each turns raw files of one public database (or a user's extract in the same format) into a
:class:`~healthfusion.data.cohort.Cohort`. Register a reader in :data:`SOURCES` as ``name -> "module:function"``;
the function signature is ``build(path, *, task=None, progress=False, **options) -> Cohort``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

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
#: per source, the reader options that define how a model sees a patient (prediction time/window, minimum stay,
#: lookback, lab and code timing, positive class, image size); a model folder saves them and every scorer reads the
#: data with them. Options that only select data (paths, splits, sites, sizes of synthetic cohorts) are not listed.
SCORING_OPTIONS: dict[str, tuple[str, ...]] = {
    "synthetic": ("hours", "image_size", "positive_class"),
    "physionet2012": ("hours",),
    "medmnist": ("positive_class",),
    "image_folder": ("size", "channels", "classes"),
    "notes": ("prediction_time", "prediction_time_column", "classes"),
    "meds": ("anchor",),
    "fhir": ("hours",),
    "mtsamples": (),
    "diabetes130": (),
    "heart_disease": (),
    "mimic4": ("prediction_hours", "min_stay_hours", "lookback_hours", "codes_at", "lab_time"),
    "eicu": ("prediction_hours", "min_stay_hours", "lookback_hours", "apache_features"),
}


def scoring_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SCORING_OPTIONS` of source ``name`` as a reader given ``options`` uses them: the given values,
    else the reader's defaults (plus ``task`` when given). Unknown sources raise :class:`SourceError`."""
    params = inspect.signature(get_source(name)).parameters
    out = {"task": options["task"]} if options.get("task") is not None else {}
    for key in SCORING_OPTIONS.get(name, ()):
        if key in options:
            out[key] = options[key]
        elif key in params and params[key].default is not inspect.Parameter.empty:
            out[key] = params[key].default
    return out


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
    known = [p for p in params if p not in ("path", "progress", "out", "partitions")]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SourceError(f"Source {name!r} has no option {key!r}; its options: {', '.join(known) or 'none'}.{hint}")
