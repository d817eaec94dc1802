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

    def check_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """`pixels` if they are what the model takes, else ValueError saying what is wrong: an 8-bit
        image (0..255), pixels outside [0, 1] or a wrong shape would otherwise be answered, wrongly
        and with confidence, or fail deep inside as a matrix-size mismatch."""
        canvas = self.canvas
        wanted = f"(N, 1, {canvas}, {canvas}) float pixels in [0, 1], white digit on black"
        if not isinstance(pixels, torch.Tensor):
            raise TypeError(f"this model takes {wanted}; got {type(pixels).__name__}")
        if not pixels.is_floating_point():
            hint = ": divide 8-bit pixels by 255 first" if pixels.dtype == torch.uint8 else ""
            raise ValueError(f"this model takes {wanted}; got {pixels.dtype}{hint}")
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (1, canvas, canvas):
            got = f"got shape {tuple(pixels.shape)}"
            raise ValueError(f"this model takes {wanted} (its canvas is {canvas}x{canvas}); {got}")
        if pixels.numel():
            low, high = float(pixels.min()), float(pixels.max())
            if not (0.0 <= low and high <= 1.0):  # NaN fails too
                hint = ": divide 8-bit pixels by 255 first" if high > 1.0 else ""
                raise ValueError(f"this model takes {wanted}; these pixels span {low:.4g}..{high:.4g}{hint}")
        return pixels

    def transform(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The normalised images the classifier sees and theta (None for a CNN without a transformer)."""
        return self.network.transform(self.normalise(self.check_pixels(pixels)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalise(self.check_pixels(pixels)))  # (N, classes)
