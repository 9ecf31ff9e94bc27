"""Images -> normalised ``[N, C, size, size]`` float arrays; one image per stay (the latest observable one).

Pixels are scaled to [0, 1] (uint8 / 255), resized with antialiased bilinear interpolation and standardised with
the training mean and standard deviation. :func:`augment` applies the training-time
augmentation an :class:`ImageAugmentation` describes to a batch (the trainer does this when
``TrainerConfig.image_augmentation`` is set).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

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


class ImageAugmentation(BaseModel):
    """Random training-time augmentation of image batches (validated on construction; unknown keys are an error).

    Every image of a batch gets its own draw: a flip, a shift, a rotation and a zoom (one affine resampling,
    bilinear, zero padded -- zero is the training mean after :class:`ImageTransformer`), then a contrast and
    brightness jitter. The defaults are the classic small-image recipe: horizontal flips and shifts of up to 2 pixels.

    Attributes
    ----------
    hflip : bool, default True
        Mirror left-right with probability 0.5.
    vflip : bool, default False
        Mirror top-bottom with probability 0.5 (only where anatomy has no up/down orientation).
    max_shift : int, default 2
        Shift by a whole number of pixels drawn uniformly from ``[-max_shift, max_shift]`` on each axis.
    max_rotation : float, default 0.0
        Rotate by an angle drawn uniformly from ``[-max_rotation, max_rotation]`` degrees.
    max_zoom : float, default 0.0
        Scale by a factor drawn uniformly from ``[1 - max_zoom, 1 + max_zoom]``.
    intensity : float, default 0.0
        Contrast factor from ``[1 - intensity, 1 + intensity]`` and brightness offset from
        ``[-intensity, intensity]`` (in standardised units), applied as ``x * contrast + brightness``.

    Example::

        ImageAugmentation(max_shift=3, max_rotation=10, intensity=0.1)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hflip: bool = True
    vflip: bool = False
    max_shift: int = Field(2, ge=0)
    max_rotation: float = Field(0.0, ge=0.0, le=180.0)
    max_zoom: float = Field(0.0, ge=0.0, lt=1.0)
    intensity: float = Field(0.0, ge=0.0, lt=1.0)

    @property
    def geometric(self) -> bool:
        """Whether any spatial transform is enabled."""
        return self.hflip or self.vflip or self.max_shift > 0 or self.max_rotation > 0 or self.max_zoom > 0


def augment(
    images: torch.Tensor, generator: torch.Generator, config: ImageAugmentation | None = None
) -> torch.Tensor:
    """Augment a ``[B, C, H, W]`` float batch as ``config`` says (default ``ImageAugmentation()``: horizontal flips
    and shifts of up to 2 pixels); a new tensor on the same device, the input is left unchanged.

    Deterministic given the state of ``generator`` (a CPU ``torch.Generator``; the random draws are made on the
    CPU and moved to ``images.device``), which advances by the same amount for every batch of the same size.

    Raises
    ------
    ValueError
        If ``images`` is not a 4-D floating-point tensor.

    Example::

        gen = torch.Generator().manual_seed(0)
        out = augment(torch.randn(8, 1, 28, 28), gen, ImageAugmentation(max_rotation=10))
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"augment expects a [B, C, H, W] float tensor; got shape {tuple(images.shape)} and dtype {images.dtype}."
        )
    config = config if config is not None else ImageAugmentation()
    b, _, h, w = images.shape
    out = images
    if config.geometric and b > 0:
        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(b, generator=generator, dtype=torch.float64)

        def sign(enabled: bool) -> torch.Tensor:
            flip = torch.rand(b, generator=generator) < 0.5  # drawn either way: same stream for any config
            return torch.where(flip, -1.0, 1.0).to(torch.float64) if enabled else torch.ones(b, dtype=torch.float64)

        sx, sy = sign(config.hflip), sign(config.vflip)
        shift = torch.randint(-config.max_shift, config.max_shift + 1, (2, b), generator=generator)
        angle = torch.deg2rad(uniform(-config.max_rotation, config.max_rotation))
        zoom = uniform(1.0 - config.max_zoom, 1.0 + config.max_zoom)
        # theta maps output to input coordinates in [-1, 1]; a shift of k pixels is 2k / side there.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [
                torch.stack([cos * sx, -sin * sy, -2.0 * shift[0] / w], dim=1),
                torch.stack([sin * sx, cos * sy, -2.0 * shift[1] / h], dim=1),
            ],
            dim=1,
        ).to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if config.intensity > 0 and b > 0:
        i = config.intensity
        contrast = 1.0 + i * (2.0 * torch.rand(b, generator=generator) - 1.0)
        brightness = i * (2.0 * torch.rand(b, generator=generator) - 1.0)
        shape = (b, 1, 1, 1)
        out = out * contrast.to(out).view(shape) + brightness.to(out).view(shape)
    return out
