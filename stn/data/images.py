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

import errno
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from stn.data.prepare_canvas import grey_levels, place
from stn.errors import ConfigError, UserError, first_line
from stn.utils.files import check_regular

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageError(UserError):
    """An image that cannot be read or holds no digit."""


MAX_IMAGE_BYTES = 256 << 20  # far beyond a photo; PIL's pixel limit guards what it decodes to


def _check_file(path: Path) -> None:
    """ImageError unless `path` is a regular file: a FIFO would block PIL's open, a dangling link
    or a link loop is named as what it is."""
    if path.is_symlink():
        try:
            os.stat(path)
        except FileNotFoundError:
            raise ImageError(f"{path} is a link to {os.readlink(path)}, which does not exist") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise ImageError(f"{path} is a link that leads back to itself (a loop of links)") from None
    elif not path.exists():
        raise ImageError(f"cannot read {path} as an image (no such file)")
    try:
        check_regular(path, MAX_IMAGE_BYTES)
    except ConfigError as error:
        raise ImageError(str(error)) from None


def read_grey(path: Path) -> torch.Tensor:
    """(H, W) float grey levels in [0, 1], as an image viewer shows the file (a phone photo's
    pixels turned as its EXIF orientation says); transparency is composited onto white paper."""
    _check_file(path)
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
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else first_line(error)
        raise ImageError(f"cannot read {path} as an image ({reason})") from None
    if grey.size == 0:
        raise ImageError(f"{path} has no pixels")
    return torch.from_numpy(grey.copy())


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
    inverted (`invert`: None detects it from the border), and where the image went (`Placement`).
    The steps are stn/data/prepare_canvas.py's `place` (NumPy and PIL only, so that an exported
    model's users run the very same code)."""
    try:
        pixels, inverted, where = place(grey.numpy(), canvas, invert)
    except ValueError as error:
        raise ImageError(str(error)) from None
    return torch.from_numpy(pixels)[None], inverted, Placement(*where)


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
