"""Run folders that cannot mix two runs, and hold no absolute paths of the user's machine.

* :func:`check_run_folder` / :func:`claim_run_folder`: a run writes into a new or empty folder; a folder with
  files in it is refused unless ``overwrite`` is given, which clears it first. Inputs that live inside the folder
  (the demo's generated ``cohort/``) are kept. Checking happens before the data is read and clearing after, so a
  run that fails on a bad data path leaves an earlier run's files alone.
* :func:`write_run_config`: ``config.yaml`` with every absolute path made relative to the run folder (which is
  the config file's folder, so :func:`~healthfusion.workflows.config.load_run_config` reads it back).
* :func:`record_artefacts` / :func:`check_artefacts`: ``artefacts.json`` records, for each artefact the run
  wrote, its SHA-256 and the SHA-256 of the model folder it belongs to (:func:`model_digest`, over every file of
  ``model/``, or of ``models/`` for a transfer sweep's models: :func:`models_folder`). ``report``, ``explain`` and ``evaluate`` call :func:`check_artefacts` and refuse an artefact of
  another model, an artefact changed after it was written, or one the run did not write (e.g. an audit left from
  an earlier run). A folder without ``artefacts.json`` (written before it existed, or by hand) is not checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from healthfusion.files import write_text

MANIFEST = "artefacts.json"
#: run-folder files (relative POSIX paths) and folders whose files are artefacts of the run's model
ARTEFACT_FILES = ("config.yaml", "predictions.csv", "metrics.json", "comparison.csv",
                  "comparison_operating_point.csv", "roc.png", "pr.png", "history.json", "accounting.csv",
                  "domains.csv", "tuning.csv",
                  # healthfusion transfer
                  "results.csv", "summary.csv", "gains.csv", "learning_curve.png", "shift.json", "shift.csv",
                  "histories.json", "run.json",
                  # healthfusion multitask
                  "tasks.csv", "clusters.json", *(f"tim_{kind}.{ext}" for kind in ("attention", "ablation", "retrain")
                                                  for ext in ("csv", "png")))
ARTEFACT_FOLDERS = ("audit", "explanations", "shap")
#: the folder(s) a run's artefacts belong to: a run's model, or the models of a transfer sweep
MODEL_FOLDERS = ("model", "models")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked: not empty, or holding artefacts of another model."""


def _entries(run_dir: Path, keep: Iterable[str]) -> list[Path]:
    keep = set(keep)
    return sorted(p for p in run_dir.iterdir() if p.name not in keep) if run_dir.is_dir() else []


def check_run_folder(run_dir: str | Path, overwrite: bool = False, keep: Iterable[str] = ()) -> None:
    """Raise :class:`RunFolderError` when ``run_dir`` exists, is not a folder, or holds entries other than
    ``keep`` (names of its top-level entries that are the run's inputs) and ``overwrite`` is False."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"Run folder {run_dir} is a file; pass a folder path for `out`.")
    found = _entries(run_dir, keep)
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise RunFolderError(f"Run folder {run_dir} is not empty ({names}); a run writes into a new or empty "
                             "folder so that two runs never mix. Choose another `out`, or pass --overwrite to "
                             "clear it first.")


def claim_run_folder(run_dir: str | Path, overwrite: bool = False, keep: Iterable[str] = ()) -> Path:
    """Create ``run_dir`` or, after :func:`check_run_folder`, clear it (every entry but ``keep``); return it."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir, overwrite, keep)
    for entry in _entries(run_dir, keep):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def source_paths(specs: Iterable[Any]) -> list[Any]:
    """The ``path`` and ``cohort`` of every data source spec in ``specs`` (pooled ``sources`` included), for
    :func:`inputs_inside`."""
    out: list[Any] = []
    for spec in specs:
        if spec is None:
            continue
        out += [getattr(spec, "path", None), getattr(spec, "cohort", None)]
        out += source_paths(getattr(spec, "sources", None) or [])
    return out


def inputs_inside(run_dir: str | Path, paths: Iterable[Any]) -> list[str]:
    """Names of the top-level entries of ``run_dir`` that hold any of ``paths`` (the run's input data)."""
    root = Path(run_dir).resolve()
    names = []
    for path in paths:
        if path is None:
            continue
        resolved = Path(path).resolve()
        if resolved != root and root in resolved.parents:
            names.append(resolved.relative_to(root).parts[0])
    return names


def portable(value: Any, run_dir: Path) -> Any:
    """``value`` (a JSON-like config dump) with every absolute path string made relative to ``run_dir``."""
    if isinstance(value, dict):
        return {k: portable(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, run_dir) for v in value]
    if isinstance(value, str) and value.startswith(("/", "~")) and "\n" not in value:
        return os.path.relpath(Path(value).expanduser(), run_dir.resolve())
    return value


def write_run_config(dump: dict, run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/config.yaml`` from a config's JSON dump, paths relative to the run folder; return it."""
    run_dir = Path(run_dir)
    return write_text(run_dir / "config.yaml", yaml.safe_dump(portable(dump, run_dir), sort_keys=False))


def models_folder(run_dir: str | Path) -> Path:
    """The folder of ``run_dir``'s model(s): ``model/`` (train, multitask) or else ``models/`` (transfer)."""
    run_dir = Path(run_dir)
    for name in MODEL_FOLDERS:
        if (run_dir / name).is_dir():
            return run_dir / name
    return run_dir / MODEL_FOLDERS[0]


def model_digest(model_dir: str | Path) -> str | None:
    """SHA-256 over the relative paths and bytes of every file under ``model_dir``; None when it has none."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file()) if model_dir.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def artefact_files(run_dir: str | Path) -> list[str]:
    """Relative POSIX paths of the artefacts present in ``run_dir`` (:data:`ARTEFACT_FILES` and every file
    under :data:`ARTEFACT_FOLDERS`)."""
    run_dir = Path(run_dir)
    found = [name for name in ARTEFACT_FILES if (run_dir / name).is_file()]
    for folder in ARTEFACT_FOLDERS:
        found += sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / folder).rglob("*") if p.is_file())
    return found


def _read_manifest(run_dir: Path) -> dict | None:
    path = run_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path} is not valid JSON ({err}); re-run the job that wrote the folder.") from err
    return manifest


def record_artefacts(run_dir: str | Path, paths: Iterable[str] | None = None) -> None:
    """Record ``paths`` (relative to ``run_dir``; default every :func:`artefact_files`) in ``artefacts.json``
    as artefacts of the run folder's current model (:func:`models_folder`). A folder without a model is left
    unrecorded."""
    run_dir = Path(run_dir)
    model = model_digest(models_folder(run_dir))
    if model is None:
        return
    manifest = _read_manifest(run_dir) or {}
    if manifest.get("model_sha256") != model:
        manifest = {"model_sha256": model, "files": {}}
    names = artefact_files(run_dir) if paths is None else list(paths)
    for name in names:
        if (run_dir / name).is_file():
            manifest["files"][name] = {"sha256": _sha256(run_dir / name), "model_sha256": model}
    write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))


def check_artefacts(run_dir: str | Path, paths: Iterable[str] | None = None) -> None:
    """Refuse (:class:`RunFolderError`, naming the file) an artefact in ``run_dir`` that belongs to another model,
    was changed after the run wrote it, or was not written by the run; ``paths`` limits the check to those files
    (default: every :func:`artefact_files`). Nothing is checked without ``artefacts.json``."""
    run_dir = Path(run_dir)
    manifest = _read_manifest(run_dir)
    if manifest is None:
        return
    folder = models_folder(run_dir)
    model = model_digest(folder)
    if model != manifest.get("model_sha256"):
        raise RunFolderError(f"{folder} is not the model the artefacts of {run_dir} were written for (its files "
                             "changed after the run); re-run the job that wrote it into a new folder.")
    files = manifest.get("files", {})
    for name in artefact_files(run_dir) if paths is None else paths:
        path = run_dir / name
        if not path.is_file():
            continue
        entry = files.get(name)
        if entry is None:
            raise RunFolderError(f"{path} was not written by the run of the model in {folder} (left by an "
                                 "earlier run or copied in); delete it or re-run into a new folder.")
        if entry.get("model_sha256") != model:
            raise RunFolderError(f"{path} belongs to another model (sha256 {str(entry.get('model_sha256'))[:12]}, "
                                 f"the folder's model is {model[:12]}); delete it or re-run into a new folder.")
        if entry.get("sha256") != _sha256(path):
            raise RunFolderError(f"{path} was changed after the run wrote it; restore it or re-run into a new "
                                 "folder.")
