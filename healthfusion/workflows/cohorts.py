"""Build a cohort folder from a registered source, with progress, and check its row accounting."""

from __future__ import annotations

import inspect
from pathlib import Path

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import SourceError
from healthfusion.data.sources import check_options, get_source


def build_cohort(source: str, path: Path | None, out: Path, task: str | None = None, console=None,
                 **options) -> Cohort:
    """Run source ``source`` on the raw files at ``path``, save the cohort to ``out`` and return it (loaded from
    ``out``). The ``synthetic`` source has no raw files: it streams its generated cohort straight into ``out``;
    a reader that takes an ``out`` folder itself (MIMIC-IV) writes its large tables there as it reads them.

    Raises
    ------
    SourceError, CohortError
        On unreadable input (the message names the file, column or row), or rows that do not add up.
    """
    builder = get_source(source)
    check_options(source, options)
    generated = source == "synthetic"
    if path is None and not generated:
        raise SourceError(f"Source {source!r} reads raw files: pass --path to the folder or file that holds them.")
    target = out if generated else path
    streams = generated or "out" in inspect.signature(builder).parameters
    if streams and not generated:
        options["out"] = out
    if console is not None:
        with console.status(f"Building the {source} cohort ..."):
            cohort = builder(target, task=task, progress=True, **options)
    else:
        cohort = builder(target, task=task, **options)
    cohort.accounting.check()
    if not streams:
        cohort.save(out)
    return Cohort.load(out)
