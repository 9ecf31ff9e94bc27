"""Experiment tracking with MLflow: record a finished run folder in an MLflow store.

This is the only module that imports ``mlflow`` (lazily: ``pip install "healthfusion[track]"``). It reads what
every run folder holds, so it works for ``train``, ``transfer``, ``multitask`` and ``pretrain`` folders alike:

* params: ``config.yaml`` flattened to dotted keys (``training.lr``, ``model.hidden`` ...);
* metrics: every number of the result tables: ``comparison.csv`` as ``<model>.<column>`` (``hybrid.auroc``,
  ``hybrid.auroc_ci_low``, ``hybrid.auroc_ci_high``, ``hybrid.n`` ...), transfer's ``summary.csv`` as
  ``summary.<strategy>.<size>.<column>``, multitask's ``tasks.csv`` as ``tasks.<...>.<column>``, and the
  top-level numbers of ``metrics.json`` as ``run.<key>``;
* artefacts: the whole folder under ``run/`` (plots, report, predictions, the saved ``model/`` folder), plus
  ``environment/requirements.txt``: healthfusion's declared dependencies, torch as a range (``torch>=2.3``), never
  the local build (``2.13.0+cpu``) that MLflow's own inference would write.

The default store is a SQLite database beside the run folder (``<run parent>/mlflow.db``, artefacts in
``<run parent>/mlartifacts``); any MLflow tracking URI works.

Example::

    run_id = track_run("runs/tiny")                       # sqlite:///runs/mlflow.db
    track_run("runs/tiny", uri="http://mlflow:5000", experiment="icu-mortality")
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

from healthfusion.files import display_path
from healthfusion.optional import require

log = logging.getLogger(__name__)

# torch as a range, as pyproject.toml declares it: used when healthfusion's metadata is not installed
FALLBACK_REQUIREMENTS = ("torch>=2.3", "numpy>=1.26", "pandas>=2.2", "scikit-learn>=1.4", "safetensors>=0.4")
_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")


class TrackingError(ValueError):
    """A run folder cannot be tracked (missing folder, unreadable config) or MLflow is not installed."""


def _mlflow():
    return require("mlflow", extra="track", needed_for="Experiment tracking")


def default_uri(run_dir: str | Path) -> str:
    """``sqlite:///<run parent>/mlflow.db``: the store used when no tracking URI is given."""
    return f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"


def requirements() -> list[str]:
    """healthfusion's declared core dependencies (version ranges; torch never pinned to the local build)."""
    try:
        reqs = [r for r in metadata.requires("healthfusion") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        reqs = []
    return reqs or list(FALLBACK_REQUIREMENTS)


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings -> ``{"section.key": "value"}`` (lists and nulls as their YAML text)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")[:6000]
    return out


# result tables of the run kinds: file -> metric-name prefix ("" for the train comparison table)
METRIC_TABLES = {"comparison.csv": "", "summary.csv": "summary.", "tasks.csv": "tasks."}
KEY_COLUMNS = ("seed", "size")  # numeric columns that identify a row rather than measure it


def run_metrics(run_dir: Path) -> dict[str, float]:
    """Every number of the run's result tables (:data:`METRIC_TABLES`) as ``<prefix><row key>.<column>``, the row
    key joining the row's text columns and ``seed``/``size`` (train: ``hybrid.auroc``, ``hybrid.auroc_ci_low``;
    transfer: ``summary.finetune.100.auroc``), and the top-level numbers of ``metrics.json`` as ``run.<key>``."""
    metrics: dict[str, float] = {}
    for name, prefix in METRIC_TABLES.items():
        if (run_dir / name).is_file():
            metrics.update(_table_metrics(pd.read_csv(run_dir / name), prefix))
    summary = run_dir / "metrics.json"
    if summary.is_file():
        for key, value in json.loads(summary.read_text()).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                metrics[_key(f"run.{key}")] = float(value)
    return metrics


def _table_metrics(frame: pd.DataFrame, prefix: str) -> dict[str, float]:
    keys = [c for c in frame.columns if c in KEY_COLUMNS or not pd.api.types.is_numeric_dtype(frame[c])]
    values = [c for c in frame.columns if c not in keys]
    out = {}
    for _, row in frame.iterrows():
        row_key = ".".join(str(row[k]) for k in keys)
        for column in values:
            value = row[column]
            if isinstance(value, int | float) and math.isfinite(value):
                out[_key(f"{prefix}{row_key}.{column}")] = float(value)
    return out


def _key(name: str) -> str:
    return _NAME.sub("_", name)[:250]


def track_run(run_dir: str | Path, *, uri: str | None = None, experiment: str | None = None,
              run_name: str | None = None, log_model: bool = True) -> str:
    """Record the run folder ``run_dir`` as one MLflow run; return its run id.

    Parameters
    ----------
    run_dir : str or Path
        A run folder written by ``healthfusion train`` (or transfer, multitask, pretrain).
    uri : str, optional
        MLflow tracking URI (default: :func:`default_uri`).
    experiment : str, optional
        Experiment name (default: the config's ``name``, else the folder's name); created when new.
    run_name : str, optional
        Default: the folder's name.
    log_model : bool, default True
        Include the ``model/`` folder in the artefacts.

    Raises
    ------
    TrackingError
        If ``run_dir`` is not a folder, its ``config.yaml`` is not YAML, or MLflow is not installed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrackingError(f"Run folder {run_dir} does not exist; train first, or pass the folder a run wrote.")
    config = {}
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        except yaml.YAMLError as exc:
            raise TrackingError(f"{run_dir / 'config.yaml'} is not valid YAML ({exc}).") from exc
    mlflow = _mlflow()
    from mlflow.entities import Metric, Param

    uri = uri or default_uri(run_dir)
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = experiment or str(config.get("name") or run_dir.name)
    found = client.get_experiment_by_name(name)
    if found is not None:
        experiment_id = found.experiment_id
    elif uri.startswith("sqlite:///"):  # keep the artefacts beside the database, not in the working directory
        where = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        experiment_id = client.create_experiment(name, artifact_location=where.resolve().as_uri())
    else:
        experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=run_name or run_dir.name,
                            tags={"healthfusion.run_dir": str(run_dir.resolve())})
    run_id = run.info.run_id
    try:
        params = [Param(k, v) for k, v in flatten(config).items()]
        stamp = int(run.info.start_time)
        metrics = [Metric(k, v, stamp, 0) for k, v in run_metrics(run_dir).items()]
        for i in range(0, max(len(params), len(metrics)), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
        for item in sorted(run_dir.iterdir()):
            if item.is_dir() and (item.name != "model" or log_model):
                client.log_artifacts(run_id, str(item), artifact_path=f"run/{item.name}")
            elif item.is_file():
                client.log_artifact(run_id, str(item), artifact_path="run")
        with tempfile.TemporaryDirectory() as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text("\n".join(requirements()) + "\n")
            client.log_artifact(run_id, str(req), artifact_path="environment")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    log.info("Tracked %s as MLflow run %s in %s", display_path(run_dir), run_id, display_path(uri) if "://" not in str(uri) else uri)
    return run_id
