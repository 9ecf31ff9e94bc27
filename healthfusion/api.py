"""The small top-level API: ``healthfusion.load_cohort``, ``healthfusion.train`` and ``healthfusion.load_model``.

Thin wrappers over the source readers, the ``healthfusion train`` workflow and the scoring entry point, so a
study runs in a few lines of Python (docs/quickstart.md). ``import healthfusion`` stays light: the package loads
this module, and torch with it, on first use of one of these names.

Example::

    import healthfusion as hf

    cohort = hf.load_cohort("work/cohort", source="synthetic", n_stays=200)
    run = hf.train({"data": {"cohort": "work/cohort", "label": "mortality"}, "out": "work/run"})
    risks = hf.load_model(run / "model").predict(cohort)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from healthfusion.data.cohort import Cohort
from healthfusion.data.sources import check_options, get_source
from healthfusion.models.scoring import ScoringModel
from healthfusion.models.scoring import load_model as _load_model
from healthfusion.workflows.config import RunConfig, load_run_config, run_config_from_mapping


def load_cohort(path: str | os.PathLike, source: str | None = None, **options: Any) -> Cohort:
    """A cohort: the saved cohort folder ``path`` (``source`` None), or the raw files at ``path`` read by the
    registered ``source`` reader (e.g. ``physionet2012``, ``mimic4``, ``medmnist``; ``synthetic`` writes a
    generated cohort to ``path`` first) with its reader ``options`` (e.g. ``n_stays=200`` for synthetic).

    Raises
    ------
    SourceError, CohortError (ValueErrors)
        An unknown source (with the closest names), an unknown option (naming the options the reader takes), or
        unreadable files (naming the file and the fix).
    """
    if source is None:
        if options:
            raise TypeError(f"options {sorted(options)} apply to a source reader; give source=... or drop them "
                            "to open a saved cohort folder.")
        return Cohort.load(path)
    builder = get_source(source)
    check_options(source, options)
    return builder(path, **options)


def train(config: str | os.PathLike | Mapping[str, Any] | RunConfig, *, out: str | os.PathLike | None = None,
          overrides: Sequence[str] = (), quick: bool = False, overwrite: bool = False, console=None) -> Path:
    """Run ``healthfusion train`` on ``config`` and return the run folder.

    ``config`` is a RUN.yaml path (relative paths inside it resolved against its folder), the same settings as a
    mapping (relative paths resolved against the working directory) or a validated :class:`RunConfig`.
    ``overrides`` are ``--set`` items (``"training.max_epochs=5"``), ``quick`` is ``--quick`` and ``out`` is
    ``--out`` (they apply to a path or a mapping); ``console`` (a ``rich.console.Console``) shows progress.

    Raises
    ------
    ConfigError
        Invalid settings (each offending key named); then as :func:`healthfusion.workflows.train.run_training`.
    """
    from healthfusion.workflows.train import run_training

    if isinstance(config, RunConfig):
        if overrides or quick or out is not None:
            raise TypeError("overrides, quick and out apply to a config file or mapping; set them on the RunConfig "
                            "(config.model_copy(update=...)) instead.")
        run_config = config
    elif isinstance(config, Mapping):
        run_config = run_config_from_mapping(dict(config), Path.cwd(), overrides, out, quick)
    else:
        run_config = load_run_config(config, overrides, out, quick)
    return run_training(run_config, console=console, overwrite=overwrite)


def load_model(path: str | os.PathLike) -> ScoringModel:
    """The saved model folder ``path`` (e.g. ``RUN_DIR/model``) ready to score: ``.predict(cohort)`` gives one row
    per stay (``probability`` and ``risk_group`` for a binary label), the same numbers as ``healthfusion
    predict`` and the HTTP service (:func:`healthfusion.models.scoring.load_model`).

    Raises
    ------
    ModelLoadError (a ValueError)
        A missing, incomplete or tampered folder (the file is named).
    """
    return _load_model(path)
