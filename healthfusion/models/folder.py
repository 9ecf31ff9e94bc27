"""``model.json``: the card of a run's model folder and the checksum of every file in it.

Every model folder a run saves (the hybrid, an ensemble and each of its members) carries one ``model.json``::

    {"format": "healthfusion.model-folder", "format_version": 1,
     "kind": "hybrid" | "ensemble" | "gradient_boosting",
     "label": {"name": "in_hospital_death", "kind": "binary", "classes": null, "description": "1 = died ..."},
     "data": {"source": "physionet2012", "options": {"hours": 48.0}},     # how the reader built the stays
     "threshold": 0.5, "risk_groups": {"rule": "...", "threshold": 0.5}, "operating_point": {...} or null,
     "calibrator": {"method": "platt", "params": {...}, ...} or null,
     "training": {"n": 2800, "n_positive": 390, "prevalence": 0.139, "data_sha256": ..., "prediction_time": {...},
                  "variables": {"HR": {"n_stays": ..., "min": ..., "p01": ..., "median": ..., "p99": ..., "max": ...}}},
     "scoring": {...kind-specific settings, e.g. the engineered statistics of gradient boosting...},
     "files": {"config.json": "<sha256>", "model.safetensors": "<sha256>", "preprocessing.json": "<sha256>", ...},
     "fingerprint": "<sha256 of everything above>"}

``files`` lists every file under the folder (sub-folders included) when it was saved; :func:`read_card` checks
each of them and the card's own fingerprint, so an edited ``preprocessing.json``, a swapped weights file or an
edited card is refused with the file named.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from healthfusion.models.base import ModelLoadError, state_checksum

CARD_FILE = "model.json"
CARD_FORMAT = "healthfusion.model-folder"
CARD_VERSION = 1
FOLDER_KINDS: tuple[str, ...] = ("hybrid", "ensemble", "gradient_boosting")
_REQUIRED = ("kind", "label", "data", "threshold", "risk_groups", "calibrator", "training", "files", "fingerprint")
RESAVE_HINT = "re-run `healthfusion train CONFIG` to save the model folder again"


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_files(directory: Path) -> list[str]:
    rels = (p.relative_to(directory).as_posix() for p in directory.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp"))
    return sorted(rel for rel in rels if rel != CARD_FILE)


def write_card(directory: str | os.PathLike, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.json`` into ``directory``: ``card`` plus the checksum of every file now in the folder (member
    folders' own ``model.json`` included) and the fingerprint. Call it after every other file is written.

    Returns
    -------
    The card as written (with ``files`` and ``fingerprint``).

    Raises
    ------
    ValueError
        ``card`` lacks a required key, names an unknown kind, or is not JSON-serialisable (NaN included).
    """
    directory = Path(directory)
    missing = [k for k in _REQUIRED if k not in card and k not in ("files", "fingerprint")]
    if missing:
        raise ValueError(f"A model card needs {missing}; got keys {sorted(card)}.")
    if card["kind"] not in FOLDER_KINDS:
        raise ValueError(f"Model folder kind {card['kind']!r} is not one of {', '.join(FOLDER_KINDS)}.")
    files = {rel: file_sha256(directory / rel) for rel in _folder_files(directory)}
    body = {"format": CARD_FORMAT, "format_version": CARD_VERSION,
            **{k: v for k, v in card.items() if k not in ("files", "fingerprint")}, "files": dict(sorted(files.items()))}
    try:
        body["fingerprint"] = state_checksum(body)
        text = json.dumps(body, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"The model card of {directory} is not JSON-serialisable ({err}).") from err
    tmp = directory / (CARD_FILE + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, directory / CARD_FILE)
    return body


def has_card(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a ``model.json``."""
    return (Path(directory) / CARD_FILE).is_file()


def _saved_model_type(directory: Path) -> str | None:
    try:
        raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return raw.get("model_type") if isinstance(raw, dict) else None


def read_card(directory: str | os.PathLike) -> dict[str, Any]:
    """The verified ``model.json`` of ``directory``.

    Checks the card's format and fingerprint and the SHA-256 of every file it lists.

    Raises
    ------
    ModelLoadError
        Naming the file and the fix: no card (a folder saved by an earlier healthfusion, a run folder instead of its
        ``model/``), unreadable JSON, another format or a newer version, an edited card, a listed file missing or
        changed since saving.
    """
    directory = Path(directory)
    path = directory / CARD_FILE
    if not directory.is_dir():
        raise ModelLoadError(f"Model folder {directory} does not exist or is not a folder.")
    if not path.is_file():
        if (directory / "model" / CARD_FILE).is_file() or (directory / "model").is_dir():
            raise ModelLoadError(f"{directory} is a run folder, not a model folder; use {directory / 'model'}.")
        model_type = _saved_model_type(directory)
        if model_type not in (None, "hybrid"):
            raise ModelLoadError(
                f"{directory} holds a {model_type!r} network without {CARD_FILE}: load_model scores the model folders "
                "`healthfusion train` saves (hybrid, ensemble and its members); load this one with "
                "healthfusion.models.base.load_network and score it with its own workflow.")
        raise ModelLoadError(
            f"{path} not found: {directory} is not a model folder saved by this healthfusion (folders saved before "
            f"model.json existed lack the data options, label, calibrator and checksums scoring needs); {RESAVE_HINT}.")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err}); the file is corrupted, {RESAVE_HINT}.") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelLoadError(f"{path} is not a healthfusion model card (format {CARD_FORMAT!r} expected).")
    version = card.get("format_version")
    if not isinstance(version, int) or version > CARD_VERSION:
        raise ModelLoadError(f"{path} has format_version {version!r}; this healthfusion reads up to {CARD_VERSION}: "
                             "upgrade healthfusion.")
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise ModelLoadError(f"{path} lacks {missing}; the card is incomplete, {RESAVE_HINT}.")
    body = {k: v for k, v in card.items() if k != "fingerprint"}
    if state_checksum(body) != card["fingerprint"]:
        raise ModelLoadError(f"{path} was edited after saving (its contents no longer match its fingerprint); "
                             f"restore the original file or {RESAVE_HINT}.")
    files = card["files"]
    if not isinstance(files, dict) or not files:
        raise ModelLoadError(f"{path} lists no files; {RESAVE_HINT}.")
    for rel, digest in files.items():
        target = directory / rel
        if not target.is_file():
            raise ModelLoadError(f"{target} is missing from the model folder (listed in {path}); copy the whole "
                                 "folder again.")
        if file_sha256(target) != digest:
            raise ModelLoadError(f"{target} changed after the model was saved (its SHA-256 differs from {path}); "
                                 f"restore the original file or {RESAVE_HINT}.")
    return card
