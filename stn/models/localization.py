"""Localization networks: the features from which a spatial transformer regresses its parameters.

Each ends in a hidden layer of `out_features`; the transformer adds the last layer, sized by its own
parameter count and initialised to its identity (stn/models/transformer.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stn.errors import Allowed, check, integers
from stn.models.layers import mlp, paper_input_pool

POOL = 2
# one entry per possible block; the first two are the tutorial's
DEFAULT_CHANNELS = (8, 10, 16, 32)
DEFAULT_KERNEL_SIZES = (7, 5, 3, 3)
DEFAULT_PADDINGS = (0, 0, 1, 1)


def feature_map_sizes(image_size: int, kernel_sizes: Sequence[int], paddings: Sequence[int]) -> list[int]:
    """Spatial size after each conv -> maxpool(2) block, stopping at the first that vanishes."""
    sizes = []
    size = image_size
    for kernel, padding in zip(kernel_sizes, paddings, strict=True):
        size = (size + 2 * padding - kernel + 1) // POOL
        if size < 1:
            break
        sizes.append(size)
    return sizes


def max_depth(image_size: int, kernel_sizes: Sequence[int], paddings: Sequence[int]) -> int:
    """The deepest stack of blocks whose feature map is still at least 1x1 for this input."""
    return len(feature_map_sizes(image_size, kernel_sizes, paddings))


class LocalizationNet(nn.Module):
    """A stack of `depth` conv -> maxpool(2) -> ReLU blocks, then a hidden layer of `hidden` units.

    `input_pool` > 1 max-pools the input first, as the paper's localization nets do (None: the
    paper's, stn.models.layers.paper_input_pool). The defaults
    reproduce the PyTorch STN tutorial at depth 2:
    Conv(1,8,k7) -> Pool -> ReLU -> Conv(8,10,k5) -> Pool -> ReLU -> Linear(90,32) -> ReLU, to which
    the affine transformer adds Linear(32,6). `channels`, `kernel_sizes` and `paddings` list one
    entry per possible block; the first `depth` are used.
    """

    def __init__(
        self,
        depth: int = 2,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        kernel_sizes: Sequence[int] = DEFAULT_KERNEL_SIZES,
        paddings: Sequence[int] = DEFAULT_PADDINGS,
        hidden: int = 32,
        input_pool: int | None = 1,
    ) -> None:
        super().__init__()
        input_pool = paper_input_pool(image_size) if input_pool is None else input_pool
        check(self, integers(1), input_pool=input_pool)
        image_size = image_size // input_pool  # the paper's localization nets max-pool their input first
        blocks_given = f"{len(kernel_sizes)} kernel_sizes and {len(paddings)} paddings"
        one_per_block = f"one entry per block, as many as the {blocks_given}"
        check(
            self,
            Allowed(lambda v: len(v) == len(kernel_sizes) == len(paddings), one_per_block),
            channels=channels,
        )
        deepest = max_depth(image_size, kernel_sizes, paddings)
        fits = Allowed(
            integers(1, deepest).test,
            f"1..{deepest} for a {image_size}x{image_size} input",
            "each block is conv -> maxpool(2); a deeper stack shrinks the feature map below 1x1",
        )
        check(self, fits, depth=depth)
        blocks: list[nn.Module] = [nn.MaxPool2d(input_pool)] if input_pool > 1 else []
        width = in_channels
        for out_channels, kernel, padding in zip(
            channels[:depth], kernel_sizes[:depth], paddings[:depth], strict=True
        ):
            blocks += [
                nn.Conv2d(width, out_channels, kernel_size=kernel, padding=padding),
                nn.MaxPool2d(POOL, stride=POOL),
                nn.ReLU(inplace=True),
            ]
            width = out_channels
        self.features = nn.Sequential(*blocks)
        final_size = feature_map_sizes(image_size, kernel_sizes, paddings)[depth - 1]
        self.regressor = nn.Sequential(
            nn.Flatten(),  # (N, C * S * S)
            nn.Linear(width * final_size * final_size, hidden),
            nn.ReLU(inplace=True),
        )
        self.out_features = hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, hidden) features."""
        return self.regressor(self.features(images))


class FullyConnectedLocalization(nn.Module):
    """The ST-FCN's localization net: fully connected ReLU layers on the flattened image."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: Sequence[int] = (32, 32)) -> None:
        super().__init__()
        layers = [nn.Flatten(), *mlp([in_channels * image_size * image_size, *hidden], dropout=0.0)]
        self.regressor = nn.Sequential(*layers, nn.ReLU(inplace=True))  # (N, C * H * W) -> (N, hidden[-1])
        self.out_features = hidden[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, hidden[-1]) features."""
        return self.regressor(images)
