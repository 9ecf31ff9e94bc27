"""Pretrained text encoders from a local Hugging Face folder: token ids + attention mask -> pooled feature vector.

Needs the ``text`` extra (``pip install "healthfusion[text]"``); the hashed n-gram
:class:`~healthfusion.models.encoders.text.TextEncoder` is the always-available fallback and the default text
encoder of a hybrid model. The folder is one written by ``save_pretrained`` of a ``transformers`` model and its
tokenizer (``config.json``, the weights, the tokenizer files); it is read with ``local_files_only=True`` and the
hub switched off, so nothing is ever downloaded. The notes reach the model through
:class:`~healthfusion.features.text.HFTokenTransformer` (same folder), which puts the token ids in the batch's
``text`` key and the attention mask in ``text_mask``.

Frozen or fine-tuned: ``freeze=True`` fixes the language model's weights (no gradient, kept in eval mode so dropout
does not perturb the features); otherwise it trains with the rest of the model, and the fine-tuning strategies of
:mod:`healthfusion.training.finetune` apply to it as to any encoder (``modules: ["encoders.text"]``).

Example::

    feat = CohortFeaturizer(modalities=("text",), label="specialty",
                            transformers={"text": HFTokenTransformer("models/clinical-bert", max_length=256)})
    model = HybridModel(HybridConfig(text=HFTextEncoderConfig(path="models/clinical-bert", pooling="mean"),
                                     head="multiclass", n_outputs=5))

A hybrid saved with such an encoder stores all its weights; loading it rebuilds the encoder from ``path`` (which
must still exist: it gives the architecture) and then restores the saved weights.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from healthfusion.features.text import check_local_model_dir, import_transformers
from healthfusion.models.base import ModelConfig

log = logging.getLogger(__name__)


class HFTextEncoderConfig(ModelConfig):
    """Config of :class:`HFTextEncoder`.

    Attributes
    ----------
    path : str
        Local folder in Hugging Face format (``config.json`` + weights). Required.
    pooling : "mean" | "cls", default "mean"
        Mean of the last hidden states over the real tokens, or the first token's (``[CLS]``) hidden state.
    freeze : bool, default False
        Keep the language model's weights fixed (a feature extractor).
    """

    encoder: Literal["hf"] = "hf"
    path: str = Field(min_length=1)
    pooling: Literal["mean", "cls"] = "mean"
    freeze: bool = False


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden`` [B, L, H] into [B, H]: masked mean over ``mask`` [B, L] (1 = token) or the first token."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class HFTextEncoder(nn.Module):
    """A local pretrained Hugging Face encoder (e.g. BERT) as a text encoder.

    The model is loaded with ``AutoModel.from_pretrained(path, local_files_only=True)`` in float32. Its own pooler
    layer, if it has one, is dropped (pooling is done here).

    Shapes
    ------
    forward(ids [B, L] int64, mask [B, L] int64 or bool, 1 = token) -> [B, out_dim], ``out_dim`` = the model's
    hidden size

    Raises
    ------
    LocalModelError
        On construction: the folder does not exist or lacks ``config.json`` or the weights (named in the message).
    ImportError
        On construction, if transformers is not installed (with the install command).
    ValueError
        In ``forward``: no mask, shapes that disagree, or ids outside the model's vocabulary.
    """

    def __init__(self, config: HFTextEncoderConfig):
        super().__init__()
        self.config = config
        folder = check_local_model_dir(config.path, need=("config", "weights"))
        transformers = import_transformers()
        self.model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.vocab_size = int(self.model.config.vocab_size)
        self.out_dim = int(self.model.config.hidden_size)
        if config.freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> HFTextEncoder:
        """As ``nn.Module.train``, except that a frozen language model stays in eval mode."""
        super().train(mode)
        if self.config.freeze:
            self.model.eval()
        return self

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            raise ValueError("HFTextEncoder needs the attention mask ('text_mask' in the batch); featurize the notes "
                             "with HFTokenTransformer on the same model folder.")
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"HFTextEncoder expects ids and mask of the same [B, L] shape; got {tuple(ids.shape)} "
                             f"and {tuple(mask.shape)}.")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"HFTextEncoder: token ids must lie in 0..{self.vocab_size - 1} (the vocabulary of "
                             f"{self.config.path!r}); got {int(ids.min())}..{int(ids.max())}. Tokenize with the "
                             "tokenizer of the same folder.")
        mask = mask.long()
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool_hidden(hidden, mask, self.config.pooling)
