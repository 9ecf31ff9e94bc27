"""Build a cohort folder from a registered source, with progress, and check its row accounting."""

from __future__ import annotations

import inspect
from pathlib import Path

from healthfusion.data.cohort import Cohort
from healthfusion.data.errors import CohortError, SourceError
from healthfusion.data.sources import SOURCES, check_options, get_exporter, get_source


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CohortError(f"--out {out} is a file; pass a folder for the cohort.")
    if out.is_dir() and any(out.iterdir()) and not (out / "cohort.json").is_file():
        names = sorted(p.name for p in out.iterdir())
        raise CohortError(f"--out {out} is not empty ({', '.join(names[:5])}{' ...' if len(names) > 5 else ''}) and "
                          "is not a cohort folder (no cohort.json); `cohort build` writes into a new or empty folder "
                          "or replaces an earlier cohort. Choose another --out.")


def build_cohort(source: str, path: Path | None, out: Path, task: str | None = None, console=None,
                 cluster: str | None = None, **options) -> Cohort:
    """Run source ``source`` on the raw files at ``path``, save the cohort to ``out`` and return it (loaded from
    ``out``). The ``synthetic`` source has no raw files: it streams its generated cohort straight into ``out``;
    a reader that takes an ``out`` folder itself (MIMIC-IV) writes its large tables there as it reads them.

    ``out`` must be new, empty or an earlier cohort folder (it has ``cohort.json``): a run folder or any other
    folder with files is refused, so a build never writes into it.

    With ``cluster`` (a ``--cluster`` value, see :mod:`healthfusion.scale.cluster`) a reader that takes
    ``partitions`` (MIMIC-IV, eICU) reduces its event tables in groups of stays, one Ray task per worker of the
    cluster; the cohort folder and its row accounting are the same as without it.

    Raises
    ------
    SourceError, CohortError
        On unreadable input (the message names the file, column or row), rows that do not add up, an ``out``
        folder that has files and is not a cohort, or ``cluster`` for a source that cannot be partitioned.
    """
    _check_out(Path(out))
    builder = get_source(source)
    check_options(source, options)
    if path is None and source != "synthetic":
        raise SourceError(f"Source {source!r} reads raw files: pass --path to the folder or file that holds them.")
    if cluster is not None:
        if "partitions" not in inspect.signature(builder).parameters:
            able = [name for name in SOURCES if "partitions" in inspect.signature(get_source(name)).parameters]
            raise SourceError(f"Source {source!r} cannot be built on a cluster (--cluster); the sources that can: "
                              f"{', '.join(able)}. Drop --cluster.")
        from healthfusion.scale.ray import RayCluster

        with RayCluster(cluster) as ray_cluster:
            if console is not None:
                console.print(f"Ray cluster {cluster}: {ray_cluster.n} workers")
            return _build(builder, source, path, out, task, console, {**options, "partitions": ray_cluster})
    return _build(builder, source, path, out, task, console, options)


def _build(builder, source: str, path: Path | None, out: Path, task: str | None, console, options: dict) -> Cohort:
    """The build of :func:`build_cohort` once its source, options and (optional) cluster are settled."""
    if "task" in options:
        if task is not None and task != options["task"]:
            raise SourceError(f"The task is given twice ({task!r} and the option task={options['task']!r}); "
                              "give it once, with --task.")
        task = options.pop("task")
    generated = source == "synthetic"
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


def export_cohort(cohort_path: Path, out: Path, fmt: str, seed: int = 0, console=None) -> dict:
    """Write the cohort folder ``cohort_path`` in the standard format ``fmt`` (see
    :data:`healthfusion.data.sources.EXPORTERS`) under ``out``; returns the exporter's summary.

    Raises
    ------
    SourceError, CohortError
        On an unknown format, an unreadable cohort folder or a non-empty ``out``.
    """
    exporter = get_exporter(fmt)
    cohort = Cohort.load(cohort_path)
    if console is not None:
        with console.status(f"Writing {len(cohort)} stays as {fmt} ..."):
            return exporter(cohort, out, seed=seed, progress=True)
    return exporter(cohort, out, seed=seed)
