"""Self-supervised objectives for pretraining an encoder on unlabelled data (the maths; the loop is
:mod:`healthfusion.training.pretrain`).

=================  =============  ===========================================================================
objective          encoder        what is learnt
=================  =============  ===========================================================================
``masked_value``   LSTM (ts)      a random ``mask_rate`` of the *observed* values is removed from the input
                                  (mask, carried-forward values and time-since-last recomputed, so the
                                  removed value is nowhere in the input); a linear decoder on ``[h_t, pooled]``
                                  predicts them; loss = MSE on the removed values only
``masked_feature`` MLP (static)   a random ``mask_rate`` of the features is zeroed (the training mean after
                                  standardisation); a linear decoder predicts them; MSE on masked entries
``masked_code``    bag (codes),   a random ``mask_rate`` of each row's ids is dropped; a linear layer predicts
                   hashed text    the dropped ids (multi-hot, binary cross-entropy over the vocabulary)
``contrastive``    CNN (image)    two augmented views per image (:func:`~healthfusion.features.image.augment`),
                                  a projection MLP, NT-Xent (SimCLR) loss with ``temperature``
=================  =============  ===========================================================================

Example::

    model = PretrainingModel(PretrainingConfig(encoder=LSTMEncoderConfig(n_variables=12)))  # masked_value
    out = model(batch, generator=torch.Generator().manual_seed(0))
    out["loss"], out["n"]           # the objective and the number of predicted entries / pairs in the batch
    # training: healthfusion.training.Trainer with the PretrainingLoss term
    model.encoder                   # the LSTMEncoder, to save with healthfusion.models.registry.save_encoder
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from healthfusion.features import batch as B
from healthfusion.features.image import ImageAugmentation, augment
from healthfusion.models.base import ModelConfig, PretrainedModel, register_model
from healthfusion.models.registry import EncoderConfig, build_encoder

Objective = Literal["masked_value", "masked_feature", "masked_code", "contrastive"]
#: the objective each encoder kind supports (and gets by default)
DEFAULT_OBJECTIVE: dict[str, str] = {
    "lstm": "masked_value",
    "mlp": "masked_feature",
    "bag": "masked_code",
    "hashed_bag": "masked_code",
    "cnn": "contrastive",
}


class PretrainingConfig(ModelConfig):
    """Config of :class:`PretrainingModel`.

    Attributes
    ----------
    encoder : encoder config
        Any of the encoder configs (``LSTMEncoderConfig``, ``MLPEncoderConfig``, ``CodesEncoderConfig``,
        ``TextEncoderConfig``, ``CNNEncoderConfig``). Required.
    objective : str, optional
        Default: the encoder's objective (table above); another one is an error.
    mask_rate : float, default 0.15
        Share of observed values / features / ids removed (masked objectives).
    temperature : float, default 0.1
        NT-Xent temperature (contrastive).
    projection_dim : int, default 32
        Output width of the contrastive projection MLP.
    augmentation : ImageAugmentation, optional
        Views of the contrastive objective; default: flips, shifts up to 2 px, rotations up to 10 degrees,
        zoom 10% and intensity jitter 0.1.
    """

    encoder: EncoderConfig
    objective: Objective | None = None
    mask_rate: float = Field(0.15, gt=0.0, lt=1.0)
    temperature: float = Field(0.1, gt=0.0)
    projection_dim: int = Field(32, ge=1)
    augmentation: ImageAugmentation | None = None

    @model_validator(mode="after")
    def _check(self) -> PretrainingConfig:
        expected = DEFAULT_OBJECTIVE[self.encoder.encoder]
        if self.objective is not None and self.objective != expected:
            raise ValueError(
                f"objective {self.objective!r} does not apply to a {self.encoder.encoder!r} encoder; "
                f"it supports {expected!r}."
            )
        return self

    @property
    def resolved_objective(self) -> str:
        return self.objective or DEFAULT_OBJECTIVE[self.encoder.encoder]


def drop_observations(
    values: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove a random share of observed time-series entries as if they had never been measured.

    Follows the gridding of :class:`~healthfusion.features.timeseries.TimeSeriesTransformer`: after removal the
    last observation is carried forward again (bins before a variable's first observation are 0) and the
    time since the last observation is recomputed as ``(t - last) / T`` (``(t + 1) / T`` before any), which is
    the featurizer's scale when ``hours`` is a multiple of ``step``.

    Parameters
    ----------
    values, mask : [B, T, V] float
    lengths : [B] int
        Only steps ``t < lengths`` are eligible.
    rate : float
        Probability that each observed entry is removed.
    generator : torch.Generator (CPU)

    Returns
    -------
    (values, mask, delta, removed)
        The corrupted inputs and the ``[B, T, V]`` bool map of removed entries.
    """
    b, t, _ = values.shape
    steps = torch.arange(t, device=values.device)
    valid = (steps[None, :] < lengths[:, None].to(values.device))[:, :, None]
    draw = torch.rand(values.shape, generator=generator).to(values.device)
    removed = (mask > 0) & valid & (draw < rate)
    kept = (mask > 0) & ~removed
    idx = torch.where(kept, steps[None, :, None], torch.full_like(steps, -1)[None, :, None])
    last = torch.cummax(idx, dim=1).values
    seen = last >= 0
    new_values = torch.where(seen, torch.gather(values, 1, last.clamp(min=0)), torch.zeros_like(values))
    step_f = steps[None, :, None].to(values.dtype)
    delta = torch.where(seen, step_f - last.to(values.dtype), step_f + 1.0) / t
    return new_values, kept.to(values.dtype), delta, removed


def drop_ids(ids: torch.Tensor, rate: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Set a random share of the non-padding ids of ``ids [B, L]`` to 0; returns (kept ids, removed bool map)."""
    draw = torch.rand(ids.shape, generator=generator).to(ids.device)
    removed = (ids > 0) & (draw < rate)
    return ids.masked_fill(removed, 0), removed


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy, SimCLR) of paired views ``z1, z2 [N, D]``: mean over
    the 2N anchors of ``-log softmax`` of the positive's cosine similarity among the other 2N - 1 samples."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positive)


@register_model("pretraining")
class PretrainingModel(PretrainedModel):
    """An encoder plus the small head of its self-supervised objective; registered as ``"pretraining"``.

    Shapes
    ------
    forward(batch, generator) -> {"loss": 0-dim tensor, "n": 0-dim tensor (entries predicted, or pairs)}
        ``batch`` holds the encoder's inputs (:mod:`healthfusion.features.batch` keys); rows are used as given,
        so pass only rows where the modality is present.

    Raises
    ------
    ValueError
        In ``forward``: the batch lacks the encoder's input, or (contrastive) has fewer than 2 images.
    """

    config_class = PretrainingConfig
    config: PretrainingConfig

    def __init__(self, config: PretrainingConfig):
        super().__init__(config)
        self.encoder = build_encoder(config.encoder)
        self.objective = config.resolved_objective
        enc = config.encoder
        dim = self.encoder.out_dim
        if self.objective == "masked_value":
            self.decoder = nn.Linear(2 * dim, enc.n_variables)
        elif self.objective == "masked_feature":
            self.decoder = nn.Linear(dim, enc.in_dim)
        elif self.objective == "masked_code":
            self.decoder = nn.Linear(dim, enc.vocab_size if enc.encoder == "bag" else enc.n_buckets)
        else:
            self.decoder = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, config.projection_dim))

    def _need(self, batch: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        if key not in batch:
            raise ValueError(
                f"The {self.objective} objective needs {key!r} in the batch (got {', '.join(sorted(batch))}); "
                "featurize the modality this encoder serves."
            )
        return batch[key]

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        rate = self.config.mask_rate
        if self.objective == "masked_value":
            return self._masked_value(batch, generator, rate)
        if self.objective == "masked_feature":
            x = self._need(batch, B.STATIC)
            hidden = torch.rand(x.shape, generator=generator).to(x.device) < rate
            pred = self.decoder(self.encoder(x.masked_fill(hidden, 0.0)))
            n = hidden.sum()
            loss = ((pred - x) ** 2 * hidden).sum() / n.clamp(min=1)
            return {"loss": loss, "n": n}
        if self.objective == "masked_code":
            key = B.CODES if self.config.encoder.encoder == "bag" else B.TEXT
            ids = self._need(batch, key)
            kept, removed = drop_ids(ids, rate, generator)
            logits = self.decoder(self.encoder(kept))
            target = torch.zeros_like(logits)
            rows = removed.nonzero()
            target[rows[:, 0], ids[rows[:, 0], rows[:, 1]]] = 1.0
            target[:, 0] = 0.0
            has = removed.any(dim=1)
            n = has.sum()
            per_row = F.binary_cross_entropy_with_logits(logits[:, 1:], target[:, 1:], reduction="none").sum(1)
            loss = (per_row * has).sum() / n.clamp(min=1)
            return {"loss": loss, "n": n}
        images = self._need(batch, B.IMAGE)
        if images.shape[0] < 2:
            raise ValueError("The contrastive objective needs at least 2 images per batch; raise batch_size.")
        aug = self.config.augmentation or ImageAugmentation(max_rotation=10.0, max_zoom=0.1, intensity=0.1)
        z1 = self.decoder(self.encoder(augment(images, generator, aug)))
        z2 = self.decoder(self.encoder(augment(images, generator, aug)))
        return {"loss": nt_xent(z1, z2, self.config.temperature), "n": torch.tensor(images.shape[0])}

    def _masked_value(self, batch, generator, rate):
        values, mask = self._need(batch, B.TS_VALUES), self._need(batch, B.TS_MASK)
        lengths = batch.get(B.TS_LENGTHS)
        if lengths is None:
            lengths = torch.full((values.shape[0],), values.shape[1], dtype=torch.int64)
        new_values, new_mask, delta, removed = drop_observations(values, mask, lengths, rate, generator)
        captured = {}

        def keep_output(_module, _inputs, output):
            captured["out"] = output[0]

        handle = self.encoder.lstm.register_forward_hook(keep_output)
        try:
            pooled, _ = self.encoder(new_values, new_mask, delta if self.config.encoder.use_delta else None,
                                     lengths.to(values.device))
        finally:
            handle.remove()
        out = captured["out"]
        if isinstance(out, PackedSequence):
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=values.shape[1])
        pred = self.decoder(torch.cat([out, pooled[:, None, :].expand_as(out)], dim=-1))
        n = removed.sum()
        loss = ((pred - values) ** 2 * removed).sum() / n.clamp(min=1)
        return {"loss": loss, "n": n}
