"""A person's image of a digit (a photo, a scan, a drawing: any size, colour or grey, dark ink on
light paper or light on dark) brought to a model's canvas the way MNIST itself was made.

MNIST's digits are white on black, "size normalized to fit in a 20x20 pixel box while preserving
their aspect ratio" and "centered in a 28x28 image by computing the center of mass of the pixels"
(LeCun, Cortes and Burges, the MNIST page). So: grey, light-on-dark (inverted when the border is
light), the paper to 0 (a quadratic surface fitted to the border, which takes out uneven light)
and the ink stretched to 1, cropped to the ink, scaled to 20 pixels on its
longer side, placed with its centre of mass at the centre of 28x28; a model trained on a larger
canvas (RTS 42, TC 60) gets that 28x28 digit in the middle of its canvas, as its training digits
were before they were moved.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from stn.data.distortions import MNIST_SIZE
from stn.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DIGIT_BOX = 20  # MNIST's box for the digit's longer side
INK = 0.2  # after stretching: what counts as ink when cropping and locating the digit


class ImageError(UserError):
    """An image that cannot be read or holds no digit."""


def grey_levels(image: Image.Image) -> np.ndarray:
    """(H, W) grey levels in [0, 1] of an image in any mode: 8-bit, 16- and 32-bit integers and
    floats (a scientific TIFF) are scaled by their own range rather than clipped to 0 or 255."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image)
    if image.mode == "F" or image.mode.startswith("I"):
        levels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(levels).all():
            raise ValueError("it holds values that are not finite numbers")
        low, high = float(levels.min()), float(levels.max())
        if not (low >= 0.0 and high <= 1.0):  # not already in [0, 1]: its own range
            levels = (levels - low) / (high - low) if high > low else np.zeros_like(levels)
        return levels.astype(np.float32)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def read_grey(path: Path) -> torch.Tensor:
    """(H, W) float grey levels in [0, 1]; transparency is composited onto white paper."""
    if path.is_symlink() and not path.exists():
        raise ImageError(f"{path} is a link to {os.readlink(path)}, which does not exist")
    try:
        with warnings.catch_warnings():  # PIL warns, then refuses, on images past its pixel limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                grey = grey_levels(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{path} is too large to read safely (more than {Image.MAX_IMAGE_PIXELS:,} pixels); "
            "scale it down first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else str(error).splitlines()[0]
        raise ImageError(f"cannot read {path} as an image ({reason})") from None
    if grey.size == 0:
        raise ImageError(f"{path} has no pixels")
    return torch.from_numpy(grey.copy())


WORKING_SIDE = 512  # larger images are scaled down first: the digit ends up 20 pixels high anyway


def _frame_mask(height: int, width: int) -> torch.Tensor:
    """(H, W) True on the outer frame (5% of each side, at least one pixel): the paper."""
    band_h, band_w = max(1, height // 20), max(1, width // 20)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:band_h], mask[-band_h:], mask[:, :band_w], mask[:, -band_w:] = True, True, True, True
    return mask


def is_light_background(grey: torch.Tensor) -> bool:
    """Dark ink on light paper (most photos and scans), which MNIST's white-on-black must invert."""
    return bool(grey[_frame_mask(*grey.shape)].median() > 0.5)


def paper_surface(grey: torch.Tensor) -> torch.Tensor:
    """(H, W) the paper's brightness under uneven light: a quadratic surface fitted to the frame."""
    height, width = grey.shape
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    basis = torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y], dim=-1)  # (H, W, 6)
    frame = _frame_mask(height, width)
    coefficients = torch.linalg.lstsq(basis[frame], grey[frame, None]).solution  # (6, 1)
    return (basis @ coefficients)[..., 0]


@dataclass(frozen=True)
class Placement:
    """Where `to_canvas` put the image: each step is a scale or a shift, so a canvas position maps
    back exactly. Positions are (x, y) pixel coordinates with (0, 0) the top-left corner of the
    top-left pixel (a pixel's centre at +0.5), the convention of `F.interpolate(align_corners=False)`."""

    working_scale: tuple[float, float]  # (x, y) working image / original (a large image scaled down)
    crop_origin: tuple[int, int]  # (x, y) of the digit's bounding box in the working image
    digit_scale: tuple[float, float]  # (x, y) placed digit / bounding box
    canvas_origin: tuple[int, int]  # (x, y) of the placed digit on the canvas

    def to_image(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 2) canvas positions -> the same positions in the original image's pixels."""
        scale = torch.tensor(self.digit_scale, dtype=points.dtype)
        working = (points - torch.tensor(self.canvas_origin, dtype=points.dtype)) / scale
        working = working + torch.tensor(self.crop_origin, dtype=points.dtype)
        return working / torch.tensor(self.working_scale, dtype=points.dtype)


def to_canvas(
    grey: torch.Tensor, canvas: int, invert: bool | None = None
) -> tuple[torch.Tensor, bool, Placement]:
    """(1, canvas, canvas) pixels in [0, 1], white digit on black, whether the image was
    inverted (`invert`: None detects it from the border), and where the image went (`Placement`)."""
    working_scale = (1.0, 1.0)
    if max(grey.shape) > WORKING_SIDE:
        scale = WORKING_SIDE / max(grey.shape)
        size = (max(1, round(grey.shape[0] * scale)), max(1, round(grey.shape[1] * scale)))
        working_scale = (size[1] / grey.shape[1], size[0] / grey.shape[0])
        grey = F.interpolate(grey[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
    inverted = is_light_background(grey) if invert is None else invert
    if inverted:
        grey = 1.0 - grey
    ink = (grey - paper_surface(grey)).clamp_min(0)  # the paper (and its uneven light) to 0
    strongest = torch.quantile(ink.flatten(), 0.999) if ink.numel() > 1000 else ink.max()
    if strongest < 0.1:
        raise ImageError("no digit found: the image is blank (no ink darker or lighter than its paper)")
    stretched = (ink / strongest).clamp(0, 1)
    # where the digit is: ink that stands out after a 3x3 average (single noisy pixels do not)
    smooth = F.avg_pool2d(stretched[None, None], 3, stride=1, padding=1)[0, 0]
    rows = torch.nonzero((smooth > 2 * INK).any(dim=1)).flatten()
    cols = torch.nonzero((smooth > 2 * INK).any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ImageError("no digit found: nothing stands out from the paper")
    digit = stretched[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # (h, w) the ink's bounding box
    digit = ((digit - INK) / (1 - INK)).clamp(0, 1)  # paper texture and noise to 0
    scale = DIGIT_BOX / max(digit.shape)
    size = (max(1, round(digit.shape[0] * scale)), max(1, round(digit.shape[1] * scale)))
    digit_scale = (size[1] / digit.shape[1], size[0] / digit.shape[0])
    digit = F.interpolate(digit[None, None], size=size, mode="bilinear", antialias=True, align_corners=False)[
        0, 0
    ]
    digit = digit.clamp(0, 1)
    height, width = digit.shape
    total = digit.sum().clamp_min(1e-6)
    centre_y = (digit.sum(dim=1) * (torch.arange(height) + 0.5)).sum() / total
    centre_x = (digit.sum(dim=0) * (torch.arange(width) + 0.5)).sum() / total
    top = int(min(max(round(MNIST_SIZE / 2 - float(centre_y)), 0), MNIST_SIZE - height))
    left = int(min(max(round(MNIST_SIZE / 2 - float(centre_x)), 0), MNIST_SIZE - width))
    pixels = torch.zeros(canvas, canvas)
    offset = (canvas - MNIST_SIZE) // 2  # the 28x28 field in the middle of a larger canvas
    pixels[offset + top : offset + top + height, offset + left : offset + left + width] = digit
    placement = Placement(
        working_scale, (int(cols[0]), int(rows[0])), digit_scale, (offset + left, offset + top)
    )
    return pixels[None], inverted, placement


def image_files(pattern: str) -> list[Path]:
    """The images `pattern` names: a file, a folder (its image files), or a glob. A link whose
    target is gone is kept, so that it gets its line among the results (read_grey)."""
    path = Path(pattern).expanduser()

    def listed(p: Path) -> bool:
        return p.is_file() or (p.is_symlink() and not p.exists())

    if path.is_dir():
        return sorted(p for p in path.iterdir() if listed(p) and p.suffix.lower() in IMAGE_SUFFIXES)
    if path.exists() or path.is_symlink():
        return [path]
    root = Path(path.anchor) if path.is_absolute() else Path(".")
    relative = str(path.relative_to(path.anchor)) if path.is_absolute() else str(path)
    return sorted(p for p in root.glob(relative) if listed(p))
