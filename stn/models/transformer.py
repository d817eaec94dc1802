"""The spatial transformer: theta from a localization net, then a sampling grid and bilinear sampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialTransformer(nn.Module):
    """Warps its input with the affine transform predicted by `localization`.

    `fill_value` is what the image shows outside its borders. `grid_sample` pads with 0, but
    normalised MNIST has its background at -mean/std (about -0.42): padding with 0 would paint a
    bright frame whenever the transformer zooms out, and the network can learn to shrink the digit
    for it. Sampling `images - fill_value` and adding `fill_value` back pads with the background.
    """

    def __init__(
        self,
        localization: nn.Module,
        align_corners: bool = False,
        fill_value: float = 0.0,
        output_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.localization = localization
        self.align_corners = align_corners
        self.fill_value = fill_value
        self.output_size = tuple(output_size) if output_size is not None else None

    def warp(self, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Sample (N, C, H, W) images at the grid given by (N, 2, 3) theta."""
        height, width = self.output_size or images.shape[-2:]
        size = (images.shape[0], images.shape[1], height, width)
        sampling_grid = F.affine_grid(theta, size, align_corners=self.align_corners)  # (N, H, W, 2)
        if self.fill_value == 0.0:
            return F.grid_sample(images, sampling_grid, align_corners=self.align_corners)
        shifted = images - self.fill_value
        warped = F.grid_sample(shifted, sampling_grid, align_corners=self.align_corners)
        return warped + self.fill_value

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the transformed images and the (N, 2, 3) theta that produced them."""
        theta = self.localization(images)
        return self.warp(images, theta), theta
