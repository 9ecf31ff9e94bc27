"""Images -> normalised ``[N, C, size, size]`` float arrays; one image per stay (the latest observable one).

Pixels are scaled to [0, 1] (uint8 / 255), resized with antialiased bilinear interpolation and standardised with
the training mean and standard deviation. :func:`augment` applies training-time augmentation to a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from healthfusion.data.cohort import Cohort
from healthfusion.features.base import FeatureTransformer


class ImageTransformer(FeatureTransformer):
    """Select, resize and normalise each stay's image.

    Parameters
    ----------
    size : int, default 28
        Output height and width.
    channels : int, optional
        Output channels (1 or 3); default: the channels of the training images. Grey images are repeated to 3
        channels when 3 are asked for; colour images are averaged to 1.

    Attributes
    ----------
    channels_ : int
    mean_, std_ : float
    """

    _fitted = ("channels_", "mean_", "std_")

    def __init__(self, size: int = 28, channels: int | None = None):
        self.size = size
        self.channels = channels

    def _select(self, cohort: Cohort, stay_ids: list[str]):
        images = cohort.observable("images", stay_ids).sort_values(["stay_id", "time", "image_id"])
        latest = images.groupby("stay_id", sort=False).tail(1)
        position = {s: i for i, s in enumerate(stay_ids)}
        rows = np.array([position[s] for s in latest["stay_id"]], dtype=np.int64)
        return latest, rows

    def _prepare(self, arrays: np.ndarray, channels: int) -> np.ndarray:
        x = torch.from_numpy(np.asarray(arrays)).float()
        if np.asarray(arrays).dtype == np.uint8:
            x = x / 255.0
        if x.ndim == 3:
            x = x[:, None]
        if x.shape[1] != channels:
            x = x.mean(dim=1, keepdim=True) if channels == 1 else x[:, :1].repeat(1, channels, 1, 1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x.numpy()

    def fit(self, cohort: Cohort, stay_ids: Sequence[str]) -> ImageTransformer:
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None; got {self.channels}.")
        latest, _ = self._select(cohort, [str(s) for s in stay_ids])
        if len(latest) == 0:
            raise ValueError("No training stay has an image; drop 'image' from the modalities.")
        arrays = cohort.image_array(latest)
        self.channels_ = int(self.channels or (arrays.shape[1] if arrays.ndim == 4 else 1))
        x = self._prepare(arrays, self.channels_)
        self.mean_, self.std_ = float(x.mean()), float(x.std() or 1.0)
        return self

    def transform(self, cohort: Cohort, stay_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(images [N, C, size, size] float32, present [N] bool)``; stays without an image get zeros and False."""
        self._check_fitted()
        stay_ids = [str(s) for s in stay_ids]
        out = np.zeros((len(stay_ids), self.channels_, self.size, self.size), dtype=np.float32)
        present = np.zeros(len(stay_ids), dtype=bool)
        latest, rows = self._select(cohort, stay_ids)
        if len(latest):
            x = self._prepare(cohort.image_array(latest), self.channels_)
            out[rows] = (x - self.mean_) / self.std_
            present[rows] = True
        return out, present


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Training-time augmentation of a ``[B, C, H, W]`` batch: random horizontal flips and shifts of up to
    ``max_shift`` pixels (zero padded). Deterministic given ``generator``."""
    b = images.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if max_shift > 0:
        padded = F.pad(out, (max_shift,) * 4)
        dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
        dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
        h, w = images.shape[-2:]
        out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    return out
