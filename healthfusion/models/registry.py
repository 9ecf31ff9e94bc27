"""Pretrained encoders as folders, and a registry of named local checkpoints.

An encoder of any modality (LSTM time series, MLP static, bag-of-codes, hashed n-gram text, CNN image) saves with
the same format as every healthfusion model (:mod:`healthfusion.models.base`), plus a model card::

    config.json          {"model_type": "encoder", "encoder": {...the encoder's config...}, fingerprint, ...}
    model.safetensors    the encoder's weights (keys ``encoder.*``)
    preprocessing.json   optional: the fitted feature pipeline the encoder was trained on (CohortFeaturizer state)
    model_card.json      what data, which objective/task, which preprocessing, when, metrics; tied to the weights
                         by the model fingerprint

The registry is a folder of such folders, one per name. Its root is, in order: the ``root`` argument, the
``HEALTHFUSION_MODELS`` environment variable, ``~/.healthfusion/models``. Nothing is ever downloaded.

Example::

    save_encoder(lstm, "physionet-lstm", card=ModelCard(objective="masked_value", data={"source": "physionet2012"}))
    list_encoders()                        # rows: name, modality, encoder, objective, data, created, path
    describe_encoder("physionet-lstm")     # card + config + files
    encoder = load_encoder("physionet-lstm")   # the nn.Module (an LSTMEncoder), on CPU, eval mode
    load_into_hybrid(hybrid, "ts", "physionet-lstm")
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from healthfusion.models.base import (
    CONFIG_FILE,
    PREPROCESSING_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    ModelLoadError,
    PretrainedModel,
    _read_json,
    _write_text,
    load_network,
    register_model,
)
from healthfusion.models.encoders import (
    CNNEncoder,
    CNNEncoderConfig,
    CodesEncoder,
    CodesEncoderConfig,
    LSTMEncoder,
    LSTMEncoderConfig,
    MLPEncoder,
    MLPEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
)

CARD_FILE = "model_card.json"
ENV_VAR = "HEALTHFUSION_MODELS"
DEFAULT_ROOT = Path("~/.healthfusion/models")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

EncoderConfig = Annotated[
    LSTMEncoderConfig | MLPEncoderConfig | CodesEncoderConfig | TextEncoderConfig | CNNEncoderConfig,
    Field(discriminator="encoder"),
]
#: encoder kind (the config's ``encoder`` field) -> (modality of the hybrid model, encoder class)
ENCODER_KINDS: dict[str, tuple[str, type[nn.Module]]] = {
    "lstm": ("ts", LSTMEncoder),
    "mlp": ("static", MLPEncoder),
    "bag": ("codes", CodesEncoder),
    "hashed_bag": ("text", TextEncoder),
    "cnn": ("image", CNNEncoder),
}


def build_encoder(config: ModelConfig) -> nn.Module:
    """The encoder module an encoder config describes (``LSTMEncoderConfig`` -> ``LSTMEncoder``, ...).

    Raises
    ------
    TypeError
        If ``config`` is not one of the encoder configs.
    """
    kind = getattr(config, "encoder", None)
    if kind not in ENCODER_KINDS or not isinstance(config, ModelConfig):
        raise TypeError(f"Expected an encoder config ({', '.join(ENCODER_KINDS)}), got {type(config).__name__}.")
    return ENCODER_KINDS[kind][1](config)


def encoder_modality(config: ModelConfig) -> str:
    """The hybrid modality (``ts``, ``static``, ``codes``, ``text``, ``image``) an encoder config serves."""
    kind = getattr(config, "encoder", None)
    if kind not in ENCODER_KINDS:
        raise TypeError(f"Expected an encoder config ({', '.join(ENCODER_KINDS)}), got {type(config).__name__}.")
    return ENCODER_KINDS[kind][0]


class PretrainedEncoderConfig(ModelConfig):
    """Config of :class:`PretrainedEncoder`: the wrapped encoder's own config (discriminated by its ``encoder``)."""

    encoder: EncoderConfig


@register_model("encoder")
class PretrainedEncoder(PretrainedModel):
    """One encoder saved on its own; registered as ``"encoder"``. ``forward`` is the wrapped encoder's.

    Example::

        wrapped = PretrainedEncoder.from_encoder(LSTMEncoder(LSTMEncoderConfig(n_variables=5)))
        wrapped.save_pretrained("enc")
        PretrainedEncoder.from_pretrained("enc").encoder   # the LSTMEncoder
    """

    config_class = PretrainedEncoderConfig
    config: PretrainedEncoderConfig

    def __init__(self, config: PretrainedEncoderConfig):
        super().__init__(config)
        self.encoder = build_encoder(config.encoder)

    @classmethod
    def from_encoder(cls, encoder: nn.Module) -> PretrainedEncoder:
        """Wrap an existing encoder module; the wrapper shares (not copies) its parameters.

        Raises
        ------
        TypeError
            If ``encoder`` is not one of the healthfusion encoders (it needs a ``config`` of an encoder kind).
        """
        config = getattr(encoder, "config", None)
        expected = ENCODER_KINDS.get(getattr(config, "encoder", None), (None, None))[1]
        if expected is None or type(encoder) is not expected:
            raise TypeError(
                f"Expected one of the encoders {', '.join(c.__name__ for _, c in ENCODER_KINDS.values())}, "
                f"got {type(encoder).__name__}."
            )
        wrapped = cls(PretrainedEncoderConfig(encoder=config))
        wrapped.encoder = encoder
        return wrapped

    @property
    def modality(self) -> str:
        return encoder_modality(self.config.encoder)

    def forward(self, *inputs):
        return self.encoder(*inputs)


class ModelCard(BaseModel):
    """What a pretrained encoder is: stored as ``model_card.json`` beside its weights.

    Attributes
    ----------
    name : str, optional
        Registry name (set by :func:`save_encoder` when saving into the registry).
    objective : str
        How the weights were learnt, e.g. ``"masked_value"``, ``"contrastive"``, ``"masked_feature"``,
        ``"supervised"``.
    task : str, optional
        The supervised task, when there was one (e.g. ``"in_hospital_death"``).
    data : dict
        What data: source, path, number of stays, anything that identifies it.
    preprocessing : dict
        Summary of the feature pipeline (e.g. variables, window, step); its full state is ``preprocessing.json``.
    metrics : dict
        Final training/validation numbers of the objective.
    created : str
        ISO-8601 UTC time; filled in when saving.
    notes : str
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    objective: str = "unspecified"
    task: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str | None = None
    notes: str = ""


# ----------------------------------------------------------------------------------------------- save / load
def registry_root(root: str | os.PathLike | None = None) -> Path:
    """The registry folder: ``root`` if given, else ``$HEALTHFUSION_MODELS``, else ``~/.healthfusion/models``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_ROOT.expanduser()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"Invalid model name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)."
        )
    return name


def save_encoder(
    encoder: nn.Module,
    name_or_path: str | os.PathLike,
    card: ModelCard | dict | None = None,
    preprocessing_state: dict | None = None,
    root: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Save an encoder (or a :class:`PretrainedEncoder`) with its model card.

    Parameters
    ----------
    encoder : nn.Module
        One of the healthfusion encoders, or a :class:`PretrainedEncoder`.
    name_or_path : str or path
        A bare name (``"physionet-lstm"``) saves into the registry root; anything with a path separator, or a
        ``Path``, is used as the folder itself.
    card : ModelCard or dict, optional
        ``created`` is filled in; ``name`` is set for registry saves.
    preprocessing_state : dict, optional
        JSON state of the fitted feature pipeline (``CohortFeaturizer.get_state()``).
    root : path, optional
        Registry root (see :func:`registry_root`).
    overwrite : bool, default False

    Returns
    -------
    Path of the folder.

    Raises
    ------
    ValueError
        Invalid name, an existing folder without ``overwrite=True``, or an invalid card.
    TypeError
        If ``encoder`` is not a healthfusion encoder.
    """
    wrapped = encoder if isinstance(encoder, PretrainedEncoder) else PretrainedEncoder.from_encoder(encoder)
    try:
        card = card if isinstance(card, ModelCard) else ModelCard.model_validate(card or {})
    except ValidationError as err:
        raise ValueError(f"Invalid model card: {err}") from None
    if isinstance(name_or_path, Path) or os.sep in str(name_or_path) or "/" in str(name_or_path):
        directory = Path(name_or_path)
    else:
        directory = registry_root(root) / _check_name(str(name_or_path))
        card = card.model_copy(update={"name": str(name_or_path)})
    if (directory / CONFIG_FILE).exists() and not overwrite:
        raise ValueError(f"{directory} already holds a model; pass overwrite=True (--overwrite) or choose another name.")
    card = card.model_copy(update={"created": card.created or datetime.now(timezone.utc).isoformat(timespec="seconds")})
    wrapped.save_pretrained(directory, preprocessing_state=preprocessing_state)
    fingerprint = _read_json(directory / CONFIG_FILE)["model_fingerprint"]
    body = {**card.model_dump(mode="json"), "model_fingerprint": fingerprint}
    _write_text(directory / CARD_FILE, json.dumps(body, indent=2, sort_keys=True, allow_nan=False))
    return directory


def resolve_encoder_path(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """The folder of a saved encoder: an existing folder path as is, else a registry name.

    Raises
    ------
    ModelLoadError
        Neither a folder nor a registered name; the message lists the registry root and the names it holds.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    reg = registry_root(root)
    candidate = reg / str(name_or_path)
    if _NAME.match(str(name_or_path)) and candidate.is_dir():
        return candidate
    names = [row["name"] for row in list_encoders(root) if not row["error"]]
    hint = f"registered names: {', '.join(names)}" if names else "the registry is empty"
    raise ModelLoadError(
        f"No pretrained encoder {str(name_or_path)!r}: it is not a folder and not a name in the registry {reg} "
        f"({hint}). Save one with `healthfusion pretrain`, or set {ENV_VAR} / --root to the registry folder."
    )


def read_card(directory: str | os.PathLike) -> ModelCard:
    """The :class:`ModelCard` of a saved encoder folder.

    Raises
    ------
    ModelLoadError
        Missing or invalid ``model_card.json``.
    """
    path = Path(directory) / CARD_FILE
    return _card_from_json(_read_json(path), path)


def _card_from_json(raw: dict[str, Any], path: Path) -> ModelCard:
    try:
        return ModelCard.model_validate({k: v for k, v in raw.items() if k != "model_fingerprint"})
    except ValidationError as err:
        raise ModelLoadError(f"{path} is not a valid model card: {err}") from None


def load_pretrained_encoder(
    name_or_path: str | os.PathLike, root: str | os.PathLike | None = None
) -> tuple[PretrainedEncoder, ModelCard, dict | None]:
    """Load a saved encoder by registry name or folder path.

    Returns
    -------
    (PretrainedEncoder, ModelCard, preprocessing_state or None)
        On CPU, eval mode.

    Raises
    ------
    ModelLoadError
        Unknown name/path, missing or corrupted files, a folder holding another kind of model, or a model card
        written for other weights.
    """
    directory = resolve_encoder_path(name_or_path, root)
    model, prep = load_network(directory)
    if not isinstance(model, PretrainedEncoder):
        raise ModelLoadError(
            f"{directory} holds a {model.model_type!r} model, not a pretrained encoder; save encoders with save_encoder."
        )
    card_path = directory / CARD_FILE
    card_raw = _read_json(card_path)
    # load_network has checked the recorded fingerprint against the weights; no need to hash them again
    fingerprint = _read_json(directory / CONFIG_FILE)["model_fingerprint"]
    if card_raw.get("model_fingerprint") != fingerprint:
        raise ModelLoadError(
            f"{card_path} belongs to other weights (fingerprint {str(card_raw.get('model_fingerprint'))[:12]}, "
            f"the model is {fingerprint[:12]}); re-save the encoder with save_encoder."
        )
    return model, _card_from_json(card_raw, card_path), prep


def load_encoder(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> nn.Module:
    """The encoder module (e.g. an :class:`LSTMEncoder`) saved under a registry name or in a folder.

    Raises
    ------
    ModelLoadError
        As :func:`load_pretrained_encoder`.
    """
    return load_pretrained_encoder(name_or_path, root)[0].encoder


def list_encoders(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per encoder folder directly under the registry root (sorted by name); unreadable folders get an
    ``error`` entry instead of failing the listing. An absent root lists nothing."""
    reg = registry_root(root)
    if not reg.is_dir():
        return []
    rows = []
    for folder in sorted(p for p in reg.iterdir() if p.is_dir()):
        row: dict[str, Any] = {"name": folder.name, "path": str(folder)}
        try:
            config = _read_json(folder / CONFIG_FILE)
            card = read_card(folder)
            enc = config.get("encoder") or {}
            row.update(
                modality=ENCODER_KINDS.get(enc.get("encoder"), ("?",))[0],
                encoder=enc.get("encoder"),
                objective=card.objective,
                data=card.data.get("source") or card.data.get("description") or "",
                created=card.created,
                error="",
            )
        except ModelLoadError as err:
            row["error"] = str(err)
        rows.append(row)
    return rows


def describe_encoder(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything known about a saved encoder without building it: path, model card, encoder config, files.

    Raises
    ------
    ModelLoadError
        Unknown name/path or an unreadable ``config.json``/``model_card.json``.
    """
    directory = resolve_encoder_path(name_or_path, root)
    config = _read_json(directory / CONFIG_FILE)
    card = read_card(directory)
    enc = config.get("encoder") or {}
    files = {f: (directory / f).stat().st_size for f in (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSING_FILE, CARD_FILE)
             if (directory / f).exists()}
    return {
        "path": str(directory),
        "modality": ENCODER_KINDS.get(enc.get("encoder"), ("?",))[0],
        "encoder": enc,
        "card": card.model_dump(mode="json"),
        "model_fingerprint": config.get("model_fingerprint"),
        "files": files,
    }


def check_compatible(expected: ModelConfig, pretrained: ModelConfig, where: str) -> None:
    """Raise ValueError unless two encoder configs build the same architecture (dropout may differ).

    ``where`` names the place in the message (e.g. ``"hybrid modality 'ts'"``)."""
    a = expected.model_dump(mode="json")
    b = pretrained.model_dump(mode="json")
    diff = sorted(k for k in set(a) | set(b) if k != "dropout" and a.get(k) != b.get(k))
    if diff:
        details = ", ".join(f"{k}: model {a.get(k)!r} vs pretrained {b.get(k)!r}" for k in diff)
        raise ValueError(
            f"The pretrained encoder does not fit {where} ({details}); build the model from the pretrained "
            "encoder's config (hybrid_config(..., pretrained=...)) or pretrain with the same input sizes."
        )


def load_into_hybrid(model: nn.Module, modality: str, name_or_path: str | os.PathLike,
                     root: str | os.PathLike | None = None) -> ModelCard:
    """Copy a saved encoder's weights into ``model.encoders[modality]`` (a :class:`HybridModel` or any model with
    an ``encoders`` ModuleDict) and return its card.

    Raises
    ------
    ModelLoadError
        As :func:`load_pretrained_encoder`.
    ValueError
        The model has no such modality, the encoder serves another modality, or the architectures differ.
    """
    encoders = getattr(model, "encoders", None)
    if not isinstance(encoders, nn.ModuleDict) or modality not in encoders:
        have = list(encoders) if isinstance(encoders, nn.ModuleDict) else []
        raise ValueError(f"The model has no encoder for modality {modality!r} (it has {have}).")
    wrapped, card, _ = load_pretrained_encoder(name_or_path, root)
    if wrapped.modality != modality:
        raise ValueError(
            f"{name_or_path} is a {wrapped.modality!r} encoder ({wrapped.config.encoder.encoder}); "
            f"it cannot serve modality {modality!r}."
        )
    target = encoders[modality]
    check_compatible(target.config, wrapped.config.encoder, f"modality {modality!r}")
    target.load_state_dict(wrapped.encoder.state_dict(), strict=True)
    return card
