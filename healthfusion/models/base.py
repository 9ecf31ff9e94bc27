"""Model configs and the save/load format every healthfusion model shares.

A saved model is a folder that rebuilds the model without any data::

    config.json          {"model_type": "hybrid", "format_version": 1, "model_fingerprint": "<sha256>",
                          "preprocessing_sha256": "<sha256>" (with preprocessing.json), ...config}
    model.safetensors    the state dict (parameters and buffers), no pickle
    preprocessing.json   optional: {"format_version": 1, "model_fingerprint": "<sha256>", "state": {...}}

The fingerprint is the SHA-256 of the canonical config JSON (without the fingerprint itself, but with the SHA-256
of the canonical preprocessing state) followed by every tensor's name, dtype, shape and bytes. It is written into
both JSON files, so a ``preprocessing.json`` copied from another model or edited after saving, a config edited after
saving or weights swapped from another model are all detected on load. (Folders saved before
``preprocessing_sha256`` existed still load; their preprocessing values are not covered.)

A run's model folder adds ``model.json`` (:mod:`healthfusion.models.scoring`): everything a scorer needs besides
the network, and a checksum of every file in the folder.

Example::

    model.save_pretrained("runs/m1", preprocessing_state=pipeline_state)
    model, state = load_network("runs/m1")      # any registered model type
    model = HybridModel.from_pretrained("runs/m1")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from healthfusion.files import apply_umask, display_path

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSING_FILE = "preprocessing.json"
_RESERVED_KEYS = ("model_type", "format_version", "model_fingerprint", "preprocessing_sha256")


class ModelLoadError(ValueError):
    """A saved model folder cannot be loaded: missing, corrupted, edited or mismatched files."""


class ModelConfig(BaseModel):
    """Base of every model and encoder config: validated on construction, unknown keys are errors.

    Subclasses declare pydantic fields. ``model_dump(mode="json")`` is what ``config.json`` stores.

    Raises
    ------
    pydantic.ValidationError (a ValueError)
        On unknown keys or invalid values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


MODEL_REGISTRY: dict[str, type[PretrainedModel]] = {}


def register_model(model_type: str):
    """Class decorator adding a :class:`PretrainedModel` subclass to :data:`MODEL_REGISTRY` as ``model_type``.

    Raises
    ------
    ValueError
        If ``model_type`` is already registered to another class.
    """

    def decorator(cls: type[PretrainedModel]) -> type[PretrainedModel]:
        existing = MODEL_REGISTRY.get(model_type)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"model_type {model_type!r} is already registered to {existing.__qualname__}; pick another name."
            )
        cls.model_type = model_type
        MODEL_REGISTRY[model_type] = cls
        return cls

    return decorator


def model_fingerprint(config_json: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a config dict (``model_fingerprint`` key ignored) and a state dict's tensors."""
    digest = hashlib.sha256()
    config = {k: v for k, v in config_json.items() if k != "model_fingerprint"}
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class PretrainedModel(nn.Module):
    """An ``nn.Module`` built from one :class:`ModelConfig` that saves to and loads from a folder.

    Subclasses set ``config_class``, take the config as their only constructor argument and are registered with
    :func:`register_model`, which sets ``model_type``.

    Parameters
    ----------
    config : ModelConfig
        Instance of the subclass's ``config_class``; stored as ``self.config``.

    Raises
    ------
    TypeError
        If ``config`` is not an instance of ``config_class``.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    model_type: ClassVar[str] = ""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}."
            )
        self.config = config
        self.preprocessing_sha256: str | None = None  # of the preprocessing state last saved or loaded with it

    def fingerprint(self) -> str:
        """The fingerprint :meth:`save_pretrained` would write now with the preprocessing state last saved or
        loaded with this model (see :func:`model_fingerprint`)."""
        return model_fingerprint(self._config_json(self.preprocessing_sha256), self.state_dict())

    def _config_json(self, preprocessing_sha256: str | None = None) -> dict[str, Any]:
        if not self.model_type:
            raise ValueError(f"{type(self).__name__} is not registered; decorate it with @register_model(name).")
        extra = {"preprocessing_sha256": preprocessing_sha256} if preprocessing_sha256 is not None else {}
        return {"model_type": self.model_type, "format_version": FORMAT_VERSION, **extra,
                **self.config.model_dump(mode="json")}

    def save_pretrained(self, directory: str | os.PathLike, preprocessing_state: dict | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` and (if given) ``preprocessing.json`` into ``directory``.

        The folder is created if needed; existing files of these names are replaced, and a stale
        ``preprocessing.json`` is removed when ``preprocessing_state`` is None. Files are written to a temporary
        name first and then renamed, so an interrupted save never leaves a half-written file under the final name.

        Parameters
        ----------
        directory : path
            Target folder.
        preprocessing_state : dict, optional
            JSON-serialisable state of the fitted feature pipeline (no NaN; numpy arrays as lists).

        Returns
        -------
        Path of the folder.

        Raises
        ------
        ValueError
            If ``preprocessing_state`` is not JSON-serialisable.
        """
        directory = Path(directory)
        prep_text = None
        if preprocessing_state is not None:
            try:
                prep_text = json.dumps(preprocessing_state, allow_nan=False, sort_keys=True)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"preprocessing_state is not JSON-serialisable ({err}); convert numpy values with .tolist() "
                    "and replace NaN/inf with None."
                ) from err
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        self.preprocessing_sha256 = state_checksum(json.loads(prep_text)) if prep_text is not None else None
        config_json = self._config_json(self.preprocessing_sha256)
        fingerprint = model_fingerprint(config_json, state)
        config_json["model_fingerprint"] = fingerprint

        tmp = directory / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt", "model_type": self.model_type})
        apply_umask(tmp)  # safetensors creates its file readable by the owner only
        os.replace(tmp, directory / WEIGHTS_FILE)
        _write_text(directory / CONFIG_FILE, json.dumps(config_json, indent=2, sort_keys=True))
        prep_path = directory / PREPROCESSING_FILE
        if prep_text is not None:
            prep = {"format_version": FORMAT_VERSION, "model_fingerprint": fingerprint, "state": json.loads(prep_text)}
            _write_text(prep_path, json.dumps(prep, indent=2, sort_keys=True, allow_nan=False))
        elif prep_path.exists():
            prep_path.unlink()
        logger.info("Saved %s model to %s (fingerprint %s)", self.model_type, display_path(directory),
                    fingerprint[:12])
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> PretrainedModel:
        """Rebuild the model saved in ``directory`` from its ``config.json`` and load its weights strictly.

        Called on :class:`PretrainedModel` itself it loads any registered type; called on a subclass it also
        checks the saved ``model_type``. ``preprocessing.json``, if present, is validated (use
        :func:`load_network` to get its state). The model is returned on CPU in eval mode.

        Raises
        ------
        ModelLoadError
            Missing folder/file, unreadable or corrupted file, unknown or different ``model_type``, newer format,
            invalid config, missing/unexpected tensor, shape or dtype mismatch (tensor and both shapes named),
            fingerprint mismatch (files edited after saving, or preprocessing.json from another model).
        """
        model, _ = _load(Path(directory), expected=None if cls is PretrainedModel else cls)
        return model


def state_checksum(state: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``state`` (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(state, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_network(directory: str | os.PathLike) -> tuple[PretrainedModel, dict | None]:
    """Load any registered model saved with :meth:`PretrainedModel.save_pretrained` (the network and its
    preprocessing state; :func:`healthfusion.models.scoring.load_model` loads a whole run's model folder).

    Returns
    -------
    (model, preprocessing_state)
        The model on CPU in eval mode, and the ``state`` dict of ``preprocessing.json`` or None if there is none.

    Raises
    ------
    ModelLoadError
        As :meth:`PretrainedModel.from_pretrained`.
    """
    return _load(Path(directory), expected=None)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(f"{path.name} not found in {path.parent}; is this a folder written by save_pretrained?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err}); the file is corrupted, re-save the model.") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _check_format(path: Path, data: dict[str, Any]) -> None:
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelLoadError(f"{path} has no integer 'format_version'; it was not written by save_pretrained.")
    if version > FORMAT_VERSION:
        raise ModelLoadError(
            f"{path} has format_version {version}, this healthfusion reads up to {FORMAT_VERSION}; upgrade healthfusion."
        )


def _short_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "<root>"
        parts.append(f"{loc}: {item['msg']}")
    return "; ".join(parts)


def _load(directory: Path, expected: type[PretrainedModel] | None) -> tuple[PretrainedModel, dict | None]:
    if not directory.is_dir():
        raise ModelLoadError(f"Model folder {directory} does not exist or is not a folder.")
    config_path = directory / CONFIG_FILE
    raw = _read_json(config_path)
    _check_format(config_path, raw)
    model_type = raw.get("model_type")
    if model_type not in MODEL_REGISTRY:
        known = ", ".join(sorted(MODEL_REGISTRY)) or "none"
        raise ModelLoadError(
            f"{config_path} has unknown model_type {model_type!r}; registered types: {known}. "
            "Import the module that defines it first."
        )
    cls = MODEL_REGISTRY[model_type]
    if expected is not None and not issubclass(cls, expected):
        raise ModelLoadError(
            f"{directory} holds a {model_type!r} model ({cls.__name__}), not a {expected.__name__}; "
            "use load_network()."
        )
    fields = {k: v for k, v in raw.items() if k not in _RESERVED_KEYS}
    try:
        config = cls.config_class.model_validate(fields)
    except ValidationError as err:
        raise ModelLoadError(f"{config_path} is not a valid {cls.config_class.__name__}: "
                             f"{_short_validation_error(err)}.") from None
    model = cls(config)

    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelLoadError(f"{WEIGHTS_FILE} not found in {directory}; the folder is incomplete, re-save the model.")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{weights_path} is truncated or corrupted ({err}); re-save or re-copy the model.") from None
    _check_state(model, state, weights_path)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.preprocessing_sha256 = raw.get("preprocessing_sha256")

    actual = model_fingerprint(raw, model.state_dict())
    if raw.get("model_fingerprint") != actual:
        raise ModelLoadError(
            f"{directory}: config.json or model.safetensors changed after saving (recorded fingerprint "
            f"{str(raw.get('model_fingerprint'))[:12]}, files give {actual[:12]}); re-save the model with save_pretrained."
        )
    prep_path = directory / PREPROCESSING_FILE
    if not prep_path.exists():
        return model, None
    prep = _read_json(prep_path)
    _check_format(prep_path, prep)
    if prep.get("model_fingerprint") != actual:
        raise ModelLoadError(
            f"{prep_path} belongs to another model (fingerprint {str(prep.get('model_fingerprint'))[:12]}, "
            f"this model is {actual[:12]}); save the model and its preprocessing state together."
        )
    state_dict = prep.get("state")
    if not isinstance(state_dict, dict):
        raise ModelLoadError(f"{prep_path} has no 'state' object; it was not written by save_pretrained.")
    recorded = raw.get("preprocessing_sha256")
    if recorded is not None and state_checksum(state_dict) != recorded:
        raise ModelLoadError(
            f"{prep_path} was edited after saving (its values no longer match the checksum in {CONFIG_FILE}); "
            "restore the original file or re-train the model."
        )
    return model, state_dict


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise ModelLoadError naming the first missing/unexpected tensor or shape/dtype mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ModelLoadError(
            f"{path} lacks tensor(s) {', '.join(missing[:5])} that the config's model needs; "
            "config.json and model.safetensors do not belong together."
        )
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ModelLoadError(
            f"{path} has tensor(s) {', '.join(unexpected[:5])} that the config's model does not have; "
            "config.json and model.safetensors do not belong together."
        )
    for name, tensor in own.items():
        saved = state[name]
        if saved.shape != tensor.shape:
            raise ModelLoadError(
                f"Tensor {name!r}: saved shape {tuple(saved.shape)} but config.json builds {tuple(tensor.shape)}; "
                "config.json was edited or comes from another model."
            )
        if saved.dtype != tensor.dtype:
            raise ModelLoadError(
                f"Tensor {name!r}: saved dtype {saved.dtype} but the model has {tensor.dtype}; re-save the model."
            )
