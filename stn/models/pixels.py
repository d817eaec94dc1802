"""A trained network with its input normalisation inside: what a user outside this project holds
(torch.hub, the demo). Pure PyTorch."""

from __future__ import annotations

import torch
from torch import nn


class PixelClassifier(nn.Module):
    """(N, 1, S, S) pixels in [0, 1] (white digit on black, S the canvas it was trained on) ->
    logits (N, classes). `transform` gives what the classifier sees and theta, for looking at."""

    def __init__(self, network: nn.Module, mean: float, std: float, canvas: int) -> None:
        super().__init__()
        self.network = network.to(memory_format=torch.contiguous_format)
        self.mean, self.std, self.canvas = mean, std, canvas

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def transform(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The normalised images the classifier sees and theta (None for a CNN without a transformer)."""
        return self.network.transform(self.normalise(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalise(pixels))  # (N, classes)
