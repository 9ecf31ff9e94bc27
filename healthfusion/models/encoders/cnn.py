"""Small convolutional image encoder (no torchvision): conv blocks, global pooling, a linear layer.

Example::

    enc = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28, channels=(8, 16), out_dim=32))
    enc(torch.zeros(4, 1, 28, 28)).shape  # torch.Size([4, 32])
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from healthfusion.models.base import ModelConfig


class CNNEncoderConfig(ModelConfig):
    """Config of :class:`CNNEncoder`.

    Attributes
    ----------
    in_channels : int
        Image channels C (1 grey, 3 RGB). Required.
    image_size : int
        Side H = W of the (square) input images, 8 to 1024 (28-224 are the intended range). Required; it only
        bounds the number of blocks, since pooling is adaptive.
    channels : tuple of int, default (16, 32, 64)
        Output channels of each block; one block = ``convs_per_block`` x (conv 3x3 (padding 1) + [BatchNorm2d] +
        ReLU), then max-pool 2.
    convs_per_block : int, default 1
        Convolutions per block (2 gives VGG-style blocks). With the default, the layers and their state-dict keys
        are the same as before the option existed.
    batchnorm : bool, default True
    pooling : "avg" | "max", default "avg"
        Global pooling after the last block.
    dropout : float, default 0.0
        Dropout before the final linear layer.
    out_dim : int, default 64

    Raises
    ------
    pydantic.ValidationError
        If ``image_size`` is smaller than ``2 ** len(channels)`` (each block halves the side).
    """

    encoder: Literal["cnn"] = "cnn"
    in_channels: int = Field(ge=1)
    image_size: int = Field(ge=8, le=1024)
    channels: tuple[PositiveInt, ...] = Field(default=(16, 32, 64), min_length=1)
    convs_per_block: int = Field(default=1, ge=1, le=8)
    batchnorm: bool = True
    pooling: Literal["avg", "max"] = "avg"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    out_dim: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _check_depth(self) -> CNNEncoderConfig:
        if self.image_size < 2 ** len(self.channels):
            raise ValueError(
                f"image_size {self.image_size} is too small for {len(self.channels)} pooling blocks "
                f"(needs >= {2 ** len(self.channels)}); use fewer channels entries."
            )
        return self


class CNNEncoder(nn.Module):
    """Image -> feature vector.

    No in-place operations, so gradients with respect to the input image are available for saliency maps.

    Parameters
    ----------
    config : CNNEncoderConfig

    Shapes
    ------
    forward(image [B, C, H, W] float) -> [B, out_dim]

    Raises
    ------
    ValueError
        In ``forward``, if the image is not 4-D or has another channel count than ``config.in_channels``.
    """

    def __init__(self, config: CNNEncoderConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch = config.in_channels
        for out_ch in config.channels:
            for _ in range(config.convs_per_block):
                layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=not config.batchnorm))
                if config.batchnorm:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU())
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if config.pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(in_ch, config.out_dim)
        self.out_dim = config.out_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != self.config.in_channels:
            raise ValueError(
                f"CNNEncoder expects image [B, {self.config.in_channels}, H, W], got {tuple(image.shape)}; "
                "check the image channels in the model config."
            )
        min_side = 2 ** len(self.config.channels)
        if image.shape[2] < min_side or image.shape[3] < min_side:
            raise ValueError(
                f"CNNEncoder with {len(self.config.channels)} blocks needs images of at least "
                f"{min_side}x{min_side}, got {image.shape[2]}x{image.shape[3]}."
            )
        x = self.pool(self.blocks(image)).flatten(1)
        return self.fc(self.dropout(x))
