"""Glue shared by the jobs that train models: a hybrid config sized from a fitted featurizer (optionally with
pretrained encoders, loaded by registry name or folder path), and the engineered features the classical baselines
use on the same split."""

from __future__ import annotations

import os

import torch

from healthfusion.features.compose import CohortFeaturizer
from healthfusion.models.base import ModelConfig
from healthfusion.models.encoders import (
    CNNEncoderConfig,
    CodesEncoderConfig,
    LSTMEncoderConfig,
    MLPEncoderConfig,
    TextEncoderConfig,
)
from healthfusion.models.encoders.text_hf import HFTextEncoderConfig
from healthfusion.models.encoders.transformer import TransformerEncoderConfig
from healthfusion.models.hybrid import HybridConfig, HybridModel
from healthfusion.models.registry import ModelCard, load_pretrained_encoder
from healthfusion.training.config import TrainerConfig

#: input-size field of each modality's encoder config -> the featurizer dimension it must equal
_INPUT_DIMS = {"ts": {"n_variables": "n_variables"}, "static": {"in_dim": "static_dim"},
               "codes": {"vocab_size": "code_vocab"}, "text": {"n_buckets": "text_buckets"},
               "image": {"in_channels": "image_channels", "image_size": "image_size"}}


IMAGE_BLOCKS: dict[str, dict] = {"plain": {}, "double": {"convs_per_block": 2},
                                 "residual": {"convs_per_block": 2, "residual": True}}
"""``image_block`` names of :func:`hybrid_config` -> the :class:`CNNEncoderConfig` fields they set."""


def hybrid_config(
    featurizer: CohortFeaturizer,
    *,
    fusion: str = "concat",
    hidden: int = 32,
    lstm_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.1,
    head: str = "binary",
    n_outputs: int = 1,
    pretrained: dict[str, ModelConfig] | None = None,
    text_pooling: str = "mean",
    text_freeze: bool = False,
    input_decay: bool = False,
    ts_encoder: str = "lstm",
    image_block: str = "plain",
    image_channels: tuple[int, ...] | None = None,
    image_width: int | None = None,
    image_tta: str = "none",
) -> HybridConfig:
    """A :class:`HybridConfig` whose encoders match the fitted ``featurizer``'s modalities and input sizes.

    ``pretrained`` maps modalities to the encoder configs of pretrained encoders; those are used as they are
    (their architecture, not ``hidden``), after checking their input sizes against the featurizer. Notes
    tokenized for a local Hugging Face model (``HFTokenTransformer``) get that model as text encoder, pooled by
    ``text_pooling`` and frozen when ``text_freeze``. ``input_decay`` gives the time-series encoder GRU-D's
    learned decay of carried-forward values toward the training mean (:class:`LSTMEncoderConfig`).

    ``ts_encoder`` picks the time-series encoder: ``"lstm"`` (``hidden`` per direction, ``lstm_layers``,
    ``bidirectional``, ``input_decay``) or ``"transformer"`` (:class:`TransformerEncoderConfig` with
    ``d_model=hidden`` and its own defaults otherwise: 2 pre-norm layers, 4 heads, so ``hidden`` must be a multiple
    of 4, feed-forward width ``2 * hidden``, internal dropout 0.1; ``lstm_layers``, ``bidirectional`` and
    ``input_decay`` do not apply to it, and ``dropout`` stays with the other encoders and the FC layers, as the
    one-layer LSTM has no internal dropout either).

    ``image_block`` shapes the CNN's blocks: ``"plain"`` one conv 3x3 + BN + ReLU per block, ``"double"`` two
    (VGG-style), ``"residual"`` two as a ResNet basic block with a projection shortcut (:class:`CNNEncoderConfig`;
    docs/benchmarks.md compares them on BreastMNIST). ``image_channels`` are the blocks' output channels (default
    16-32-64) and ``image_width`` the CNN's output width (default ``hidden``, the fusion width). ``image_tta``
    ``"flip"`` averages the CNN's feature over each image and its mirror when scoring (``CNNEncoderConfig.tta``).

    Raises
    ------
    ValueError
        A pretrained modality the featurizer lacks, or input sizes that differ (both named); an unknown
        ``ts_encoder`` or ``image_block``, or ``input_decay`` with the transformer.
    """
    if image_block not in IMAGE_BLOCKS:
        raise ValueError(f"image_block must be one of {', '.join(map(repr, IMAGE_BLOCKS))}, got {image_block!r}.")
    if ts_encoder not in ("lstm", "transformer"):
        raise ValueError(f"ts_encoder must be 'lstm' or 'transformer', got {ts_encoder!r}.")
    if ts_encoder == "transformer" and input_decay:
        raise ValueError("input_decay is an option of the LSTM time-series encoder; use ts_encoder='lstm' with it.")
    if ts_encoder == "transformer" and hidden % 4:
        raise ValueError(f"The transformer time-series encoder has 4 attention heads, so hidden (its d_model) must be "
                         f"a multiple of 4; got hidden={hidden} (e.g. use {4 * max(1, round(hidden / 4))}).")
    dims = featurizer.input_dims()
    enc = {}
    if "ts" in featurizer.transformers_ and ts_encoder == "transformer":
        enc["ts"] = TransformerEncoderConfig(n_variables=dims["n_variables"], d_model=hidden)
    elif "ts" in featurizer.transformers_:
        enc["ts"] = LSTMEncoderConfig(n_variables=dims["n_variables"], hidden_size=hidden, num_layers=lstm_layers,
                                      bidirectional=bidirectional, dropout=dropout if lstm_layers > 1 else 0.0,
                                      input_decay=input_decay)
    if "static" in featurizer.transformers_:
        enc["static"] = MLPEncoderConfig(in_dim=max(dims["static_dim"], 1), hidden_sizes=(hidden,), dropout=dropout)
    if "codes" in featurizer.transformers_:
        enc["codes"] = CodesEncoderConfig(vocab_size=dims["code_vocab"], embedding_dim=hidden, dropout=dropout)
    if "text" in featurizer.transformers_ and "text_vocab" in dims:
        enc["text"] = HFTextEncoderConfig(path=featurizer.transformers_["text"].model_path, pooling=text_pooling,
                                          freeze=text_freeze)
    elif "text" in featurizer.transformers_:
        enc["text"] = TextEncoderConfig(n_buckets=dims["text_buckets"], embedding_dim=hidden, hidden_sizes=(hidden,),
                                        dropout=dropout)
    if "image" in featurizer.transformers_:
        sizes = {"channels": tuple(image_channels)} if image_channels is not None else {}
        enc["image"] = CNNEncoderConfig(in_channels=dims["image_channels"], image_size=dims["image_size"],
                                        out_dim=image_width or hidden, dropout=dropout, tta=image_tta, **sizes,
                                        **IMAGE_BLOCKS[image_block])
    for m, enc_config in (pretrained or {}).items():
        if m not in enc:
            raise ValueError(f"A pretrained encoder is given for modality {m!r}, which the features do not have "
                             f"(they have {list(enc)}); add {m!r} to features.modalities.")
        for field, dim in _INPUT_DIMS[m].items():
            if getattr(enc_config, field) != dims[dim]:
                raise ValueError(
                    f"The pretrained {m!r} encoder expects {field}={getattr(enc_config, field)} but the features give "
                    f"{dims[dim]}; use the pretrained encoder's preprocessing (use_pretrained_preprocessing).")
        enc[m] = enc_config
    return HybridConfig(**enc, fusion=fusion, fusion_dim=hidden, fc_hidden=(hidden,), dropout=dropout, head=head,
                        n_outputs=n_outputs)


def load_pretrained(pretrained: dict[str, str | os.PathLike], root: str | os.PathLike | None = None):
    """Load the pretrained encoders a run names, ``{modality: name or folder}`` -> ``{modality: (encoder module,
    card, preprocessing state or None)}``.

    Raises
    ------
    ModelLoadError (a ValueError)
        An unknown name/path or an unreadable folder.
    ValueError
        An encoder serving another modality than the key it is given under.
    """
    out = {}
    for m, name in pretrained.items():
        wrapped, card, prep = load_pretrained_encoder(name, root)
        if wrapped.modality != m:
            raise ValueError(f"model.pretrained.{m} = {str(name)!r} is a {wrapped.modality!r} encoder; "
                             f"give it under {wrapped.modality!r}.")
        out[m] = (wrapped.encoder, card, prep)
    return out


def use_pretrained_preprocessing(featurizer: CohortFeaturizer, loaded: dict) -> CohortFeaturizer:
    """Replace the fitted transformer of each pretrained modality with the one the encoder was pretrained with
    (its variables, order and standardisation), so the encoder sees inputs as during pretraining. Modalities
    whose encoder has no saved preprocessing keep the fitted transformer. Returns ``featurizer``."""
    for m, (_, _, prep) in loaded.items():
        if prep is None:
            continue
        saved = CohortFeaturizer.from_state(prep)
        if m not in saved.transformers_:
            raise ValueError(f"The pretrained {m!r} encoder's preprocessing has no {m!r} transformer "
                             f"(it has {list(saved.transformers_)}); re-save it with its own featurizer state.")
        featurizer.transformers_[m] = saved.transformers_[m]
    return featurizer


def build_hybrid(featurizer: CohortFeaturizer, loaded: dict | None = None, **kwargs) -> HybridModel:
    """A :class:`HybridModel` from :func:`hybrid_config` (``kwargs``) with the ``loaded`` pretrained encoders'
    weights copied in (``loaded`` as returned by :func:`load_pretrained`)."""
    loaded = loaded or {}
    model = HybridModel(hybrid_config(featurizer, pretrained={m: enc.config for m, (enc, _, _) in loaded.items()},
                                      **kwargs))
    for m, (enc, _, _) in loaded.items():
        model.encoders[m].load_state_dict(enc.state_dict(), strict=True)
    return model


def pretrained_cards(loaded: dict) -> dict[str, ModelCard]:
    """``{modality: model card}`` of loaded pretrained encoders (for a run's metadata)."""
    return {m: card for m, (_, card, _) in loaded.items()}


def pretrained_featurizer(featurizer: CohortFeaturizer, spec) -> CohortFeaturizer:
    """A run's fitted featurizer with the preprocessing of the pretrained encoders its ``ModelSpec`` names."""
    if not spec.pretrained:
        return featurizer
    return use_pretrained_preprocessing(featurizer, load_pretrained(spec.pretrained, spec.pretrained_root))


def build_run_hybrid(featurizer: CohortFeaturizer, spec, training: TrainerConfig, head: str = "binary",
                     n_outputs: int = 1) -> tuple[HybridModel, TrainerConfig]:
    """The hybrid a run's ``ModelSpec`` describes, with its pretrained encoders loaded, and the trainer config
    whose ``finetune.modules`` default to those encoders (so a linear probe never freezes an encoder trained from
    scratch). ``head``/``n_outputs`` as in :func:`hybrid_config` (default: one binary output)."""
    loaded = load_pretrained(spec.pretrained, spec.pretrained_root) if spec.pretrained else {}
    torch.manual_seed(training.seed)  # initial weights by the run's seed, whatever drew from the generator before
    model = build_hybrid(featurizer, loaded, fusion=spec.fusion, hidden=spec.hidden, lstm_layers=spec.lstm_layers,
                         bidirectional=spec.bidirectional, dropout=spec.dropout, text_pooling=spec.text_pooling,
                         text_freeze=spec.text_freeze, head=head, n_outputs=n_outputs, ts_encoder=spec.ts_encoder,
                         image_block=spec.image.block, image_channels=tuple(spec.image.channels),
                         image_width=spec.image.width, image_tta=spec.image.tta)
    ft = training.finetune
    if loaded and ft is not None and "modules" not in ft.model_fields_set:
        modules = tuple(f"encoders.{m}" for m in loaded)
        training = training.model_copy(update={"finetune": ft.model_copy(update={"modules": modules})})
    return model, training
