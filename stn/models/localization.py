"""Localization network: regresses the transformer's parameters (6 for an affine theta) from the image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stn.models.layers import identity_head, mlp

IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
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
    """A stack of `depth` conv -> maxpool(2) -> ReLU blocks, then a small MLP that outputs theta.

    The defaults reproduce the PyTorch STN tutorial at depth 2:
    Conv(1,8,k7) -> Pool -> ReLU -> Conv(8,10,k5) -> Pool -> ReLU -> Linear(90,32) -> ReLU -> Linear(32,6).
    `channels`, `kernel_sizes` and `paddings` list one entry per possible block; the first `depth`
    are used. The last layer starts at zero weight and identity bias, so the transformer starts as
    the identity and the classifier first sees the untouched input.
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
    ) -> None:
        super().__init__()
        if not len(channels) == len(kernel_sizes) == len(paddings):
            raise ValueError(
                "channels, kernel_sizes and paddings need one entry per block, got "
                f"{len(channels)}, {len(kernel_sizes)} and {len(paddings)}"
            )
        deepest = max_depth(image_size, kernel_sizes, paddings)
        if not 1 <= depth <= deepest:
            raise ValueError(
                f"depth={depth} does not fit a {image_size}x{image_size} input: allowed range is 1..{deepest}"
            )
        blocks: list[nn.Module] = []
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
            nn.Linear(hidden, 6),
        )
        self.reset_head(torch.tensor(IDENTITY_THETA))

    def reset_head(self, identity: torch.Tensor) -> None:
        """Make the last layer output `len(identity)` parameters, starting at exactly `identity`
        (zero weight, identity bias): the transformer that owns this net decides what they mean."""
        self.regressor[-1] = identity_head(self.regressor[-1].in_features, identity)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, P) transformation parameters (P = 6 for an affine theta)."""
        return self.regressor(self.features(images))


class FullyConnectedLocalization(nn.Module):
    """The ST-FCN's localization net: fully connected ReLU layers on the flattened image."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: Sequence[int] = (32, 32)) -> None:
        super().__init__()
        layers = [nn.Flatten(), *mlp([in_channels * image_size * image_size, *hidden], dropout=0.0)]
        self.regressor = nn.Sequential(
            *layers, nn.ReLU(inplace=True), identity_head(hidden[-1], torch.tensor(IDENTITY_THETA))
        )

    def reset_head(self, identity: torch.Tensor) -> None:
        self.regressor[-1] = identity_head(self.regressor[-1].in_features, identity)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, P) transformation parameters."""
        return self.regressor(images)
