"""The tensor batch contract shared by feature builders, models and the trainer.

A batch is a plain ``dict[str, torch.Tensor]``. Feature builders produce it, models read it, the trainer moves it
to a device. Every key is optional except ``"index"``; a model uses the modalities its config names.

=================  ==========================  ==================================================================
key                shape / dtype               meaning
=================  ==========================  ==================================================================
``index``          [B] int64                   row position of each sample in the dataset it came from
``ts_values``      [B, T, V] float32           gridded, standardised time-series values (0 where unobserved)
``ts_mask``        [B, T, V] float32           1 where the value was observed in that time bin, else 0
``ts_delta``       [B, T, V] float32           hours since the variable was last observed (scaled, see features)
``ts_lengths``     [B] int64                   number of real (non-padded) time steps
``static``         [B, F] float32              encoded static features (standardised numeric + one-hot)
``codes``          [B, L] int64                code vocabulary ids, 0 = padding
``text``           [B, L] int64                hashed n-gram ids, 0 = padding; or, with ``text_mask``, the token
                                               ids of a local Hugging Face tokenizer (HFTokenTransformer)
``text_mask``      [B, L] int64                attention mask of tokenizer ids: 1 = real token, 0 = padding
                                               (only with tokenizer ids in ``text``)
``image``          [B, C, H, W] float32        normalised image
``<m>_present``    [B] bool                    modality ``m`` (ts, static, codes, text, image) exists for sample
``target``         [B] or [B, K]               label(s): float 0/1 (binary), int64 class (multiclass),
                                               float multi-hot (multilabel), float (regression); NaN/-1 = missing
=================  ==========================  ==================================================================
"""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("ts", "static", "codes", "text", "image")

INDEX = "index"
TS_VALUES = "ts_values"
TS_MASK = "ts_mask"
TS_DELTA = "ts_delta"
TS_LENGTHS = "ts_lengths"
STATIC = "static"
CODES = "codes"
TEXT = "text"
TEXT_MASK = "text_mask"
IMAGE = "image"
TARGET = "target"


def present_key(modality: str) -> str:
    """Name of the boolean ``[B]`` presence flag of ``modality`` (one of :data:`MODALITIES`)."""
    if modality not in MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}.")
    return f"{modality}_present"
