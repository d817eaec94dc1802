"""Pictures that say what they show: a caption drawn into the pixels above an image tensor, or a
label to the left of each row of a grid, so a PNG or a TensorBoard image needs no README to read."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

BAND = 14  # caption height in pixels (PIL's default bitmap font is about 11 pixels high)


def _text_image(text: str, width: int, height: int) -> torch.Tensor:
    """(3, height, width) black text on white, values in [0, 1]."""
    image = Image.new("RGB", (max(1, width), height), "white")
    ImageDraw.Draw(image).text((3, max(0, (height - 11) // 2)), text, fill="black")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def rgb(image: torch.Tensor) -> torch.Tensor:
    """(1 or 3, H, W) -> (3, H, W)."""
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def captioned(image: torch.Tensor, text: str) -> torch.Tensor:
    """(C, H, W) in [0, 1] -> (3, BAND + H, W) with `text` above it."""
    image = rgb(image.cpu())
    return torch.cat([_text_image(text, image.shape[2], BAND), image], dim=1)


def labelled_rows(grid: torch.Tensor, labels: list[str], label_width: int = 96) -> torch.Tensor:
    """(C, H, W) grid of len(labels) equal rows -> (3, H, label_width + W), each row's label on
    its left."""
    grid = rgb(grid.cpu())
    row_height = grid.shape[1] // len(labels)
    column = torch.cat([_text_image(label, label_width, row_height) for label in labels], dim=1)
    column = torch.nn.functional.pad(column, (0, 0, 0, grid.shape[1] - column.shape[1]), value=1.0)
    return torch.cat([column, grid], dim=2)


def at_input_size(transformed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The transformer's output shown at its input's size (nearest neighbour, so no pixels are
    invented), for grids that put the two side by side when the transformer samples a smaller image."""
    if transformed.shape[-2:] == images.shape[-2:]:
        return transformed
    return torch.nn.functional.interpolate(transformed, size=images.shape[-2:], mode="nearest")


def grey_image(pixels: torch.Tensor) -> Image.Image:
    """A (H, W) image in [0, 1] as an 8-bit grey image."""
    return Image.fromarray((pixels.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L")


def enlarged_grey(pixels: torch.Tensor, height: int) -> Image.Image:
    """A (H, W) image in [0, 1] as an RGB picture `height` pixels high (nearest neighbour: the
    pixels show)."""
    grey = grey_image(pixels)
    scale = height / grey.height
    return grey.resize((round(grey.width * scale), height), Image.NEAREST).convert("RGB")


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] as a PIL image."""
    return Image.fromarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
