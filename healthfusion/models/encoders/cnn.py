"""Small convolutional image encoder (no torchvision): conv blocks, global pooling, a linear layer.

Blocks are plain (``convs_per_block`` x conv + BN + ReLU, then max-pool) or, with ``residual=True``, ResNet
basic-block style (:class:`ResidualBlock`).

Example::

    enc = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28, channels=(8, 16), out_dim=32))
    enc(torch.zeros(4, 1, 28, 28)).shape  # torch.Size([4, 32])
    res = CNNEncoder(CNNEncoderConfig(in_channels=1, image_size=28, residual=True, convs_per_block=2))
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
        are the same as before the option existed. With ``residual=True`` it is the number of convolutions on the
        residual branch and must be at least 2 (2 is the ResNet basic block).
    residual : bool, default False
        Make every block a :class:`ResidualBlock`: ``convs_per_block`` x (conv 3x3 + [BatchNorm2d]) with ReLU
        between them, added to the block's input (identity, or a 1x1 conv + [BatchNorm2d] projection where the
        channel count changes), ReLU after the addition, then max-pool 2. False keeps the plain blocks, their
        layers and their state-dict keys unchanged, so models saved without the option load as before.
    batchnorm : bool, default True
    pooling : "avg" | "max", default "avg"
        Global pooling after the last block.
    dropout : float, default 0.0
        Dropout before the final linear layer.
    out_dim : int, default 64
    tta : "none" | "flip", default "none"
        Test-time augmentation: with ``"flip"``, in eval mode the feature vector is the mean of the features of the
        image and of its left-right mirror (so every scorer of a saved model, ``predict``, the service and ONNX,
        averages the same two views); training mode is unchanged. ``"none"`` keeps models saved without the option
        as they were.

    Raises
    ------
    pydantic.ValidationError
        If ``image_size`` is smaller than ``2 ** len(channels)`` (each block halves the side), or if
        ``residual=True`` with ``convs_per_block`` below 2.
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
    residual: bool = False
    tta: Literal["none", "flip"] = "none"

    @model_validator(mode="after")
    def _check_depth(self) -> CNNEncoderConfig:
        if self.image_size < 2 ** len(self.channels):
            raise ValueError(
                f"image_size {self.image_size} is too small for {len(self.channels)} pooling blocks "
                f"(needs >= {2 ** len(self.channels)}); use fewer channels entries."
            )
        if self.residual and self.convs_per_block < 2:
            raise ValueError(
                f"residual=True needs convs_per_block >= 2 (the convolutions on each block's residual branch; "
                f"a ResNet basic block has 2), got convs_per_block={self.convs_per_block}; set convs_per_block=2."
            )
        return self


class ResidualBlock(nn.Module):
    """ResNet basic-block style: ``relu(branch(x) + shortcut(x))``, then max-pool 2.

    ``branch`` is ``n_convs`` x (conv 3x3 (padding 1) + [BatchNorm2d]) with ReLU between them (none after the
    last); ``shortcut`` is the identity when ``in_ch == out_ch``, otherwise a 1x1 conv + [BatchNorm2d] projection.
    Convolutions have a bias only without batch norm. No in-place operations.

    Parameters
    ----------
    in_ch, out_ch : int
        Input and output channels.
    n_convs : int
        Convolutions on the residual branch (>= 1; the encoder uses >= 2).
    batchnorm : bool

    Shapes
    ------
    forward(x [B, in_ch, H, W]) -> [B, out_ch, H // 2, W // 2]
    """

    def __init__(self, in_ch: int, out_ch: int, n_convs: int, batchnorm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        for i in range(n_convs):
            if i > 0:
                layers.append(nn.ReLU())
            layers.append(nn.Conv2d(ch, out_ch, kernel_size=3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(out_ch))
            ch = out_ch
        self.branch = nn.Sequential(*layers)
        if in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            proj: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=not batchnorm)]
            if batchnorm:
                proj.append(nn.BatchNorm2d(out_ch))
            self.shortcut = nn.Sequential(*proj)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.branch(x) + self.shortcut(x)))


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
            if config.residual:
                layers.append(ResidualBlock(in_ch, out_ch, config.convs_per_block, config.batchnorm))
                in_ch = out_ch
                continue
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
        return self.embed(image)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """The feature vector ``[B, out_dim]`` of checked images ``[B, C, H, W]`` (no input checks; the ONNX
        export's forward uses it, so exported and torch scoring apply the same test-time augmentation)."""
        if self.config.tta == "flip" and not self.training:
            both = self.pool(self.blocks(torch.cat([image, image.flip(-1)]))).flatten(1)
            x = 0.5 * (both[: image.shape[0]] + both[image.shape[0]:])
        else:
            x = self.pool(self.blocks(image)).flatten(1)
        return self.fc(self.dropout(x))
