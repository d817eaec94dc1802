"""A photo, scan or drawing of a digit brought to a model's canvas, as MNIST was made: NumPy and
PIL only, no torch and nothing of this project, so that a deployment can copy this one file beside
an exported model (`stn.export` writes it there) and prepare its inputs as `stn.predict` does.

    from prepare_canvas import prepare
    pixels = prepare(PIL.Image.open("digit.jpg"), canvas=28)  # (1, 1, 28, 28) float32 in [0, 1]
    logits, theta = onnxruntime.InferenceSession("stn.onnx").run(None, {"pixels": pixels})

It is also what stn.predict, the demo page and torch.hub's users run (stn/data/images.py's
`to_canvas` is this `place` on a tensor). The steps: grey, white ink on
black (inverted when the border is light), the paper's uneven brightness (a quadratic surface
fitted to the border) taken out and the ink stretched, cropped to the ink, the longer side scaled to
20 pixels, the centre of mass at the centre of 28x28, in the middle of a larger canvas.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

DIGIT_BOX = 20  # MNIST's box for the digit's longer side
MNIST_SIZE = 28
INK = 0.2  # after stretching: what counts as ink when cropping and locating the digit
WORKING_SIDE = 512  # larger images are scaled down first


def grey_levels(image: Image.Image) -> np.ndarray:
    """(H, W) float32 grey levels in [0, 1] of an image in any mode, as a viewer shows it (a phone
    photo's pixels are stored turned, its EXIF orientation says how to show them), transparency
    composited onto white paper: 8-bit, 16- and 32-bit integers and floats (a scientific TIFF) are
    scaled by their own range rather than clipped to 0 or 255."""
    image = ImageOps.exif_transpose(image)
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


def _resize(levels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased when shrinking (PIL's filter, which torch's antialias follows)."""
    resized = Image.fromarray(levels.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _frame(height: int, width: int) -> np.ndarray:
    band_h, band_w = max(1, height // 20), max(1, width // 20)
    mask = np.zeros((height, width), dtype=bool)
    mask[:band_h], mask[-band_h:], mask[:, :band_w], mask[:, -band_w:] = True, True, True, True
    return mask


def _paper(grey: np.ndarray) -> np.ndarray:
    """The paper's brightness: a quadratic surface fitted to the frame (least squares)."""
    height, width = grey.shape
    y, x = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    basis = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1)  # (H, W, 6)
    frame = _frame(height, width)
    coefficients, *_ = np.linalg.lstsq(basis[frame], grey[frame], rcond=None)
    return (basis @ coefficients).astype(np.float32)


def _box_average(levels: np.ndarray) -> np.ndarray:
    """3x3 average, zeros outside (the edge pixels' averages count the zeros, as avg_pool2d does)."""
    padded = np.pad(levels, 1)
    height, width = levels.shape
    return sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9.0


def place(
    grey: np.ndarray, canvas: int = 28, invert: bool | None = None
) -> tuple[
    np.ndarray, bool, tuple[tuple[float, float], tuple[int, int], tuple[float, float], tuple[int, int]]
]:
    """(canvas, canvas) float32 pixels in [0, 1], white digit on black, from (H, W) grey levels in
    [0, 1]; whether they were inverted; and where the image went, each step a scale or a shift, as
    (x, y) pairs: (working image / original, the digit's box origin in the working image, placed
    digit / box, the placed digit's origin on the canvas). ValueError if no digit stands out."""
    grey = np.asarray(grey, dtype=np.float32)
    working_scale = (1.0, 1.0)
    if max(grey.shape) > WORKING_SIDE:
        scale = WORKING_SIDE / max(grey.shape)
        size = (max(1, round(grey.shape[0] * scale)), max(1, round(grey.shape[1] * scale)))
        working_scale = (size[1] / grey.shape[1], size[0] / grey.shape[0])
        grey = _resize(grey, *size)
    inverted = bool(np.median(grey[_frame(*grey.shape)]) > 0.5) if invert is None else bool(invert)
    if inverted:
        grey = 1.0 - grey
    ink = np.clip(grey - _paper(grey), 0, None)  # the paper (and its uneven light) to 0
    strongest = np.quantile(ink, 0.999) if ink.size > 1000 else ink.max()
    if strongest < 0.1:
        raise ValueError("no digit found: the image is blank (no ink darker or lighter than its paper)")
    stretched = np.clip(ink / strongest, 0, 1)
    # where the digit is: ink that stands out after a 3x3 average (single noisy pixels do not)
    smooth = _box_average(stretched)
    rows = np.nonzero((smooth > 2 * INK).any(axis=1))[0]
    cols = np.nonzero((smooth > 2 * INK).any(axis=0))[0]
    if rows.size == 0:
        raise ValueError("no digit found: nothing stands out from the paper")
    digit = stretched[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # (h, w) the ink's bounding box
    digit = np.clip((digit - INK) / (1 - INK), 0, 1)  # paper texture and noise to 0
    scale = DIGIT_BOX / max(digit.shape)
    size = (max(1, round(digit.shape[0] * scale)), max(1, round(digit.shape[1] * scale)))
    digit_scale = (size[1] / digit.shape[1], size[0] / digit.shape[0])
    digit = np.clip(_resize(digit, *size), 0, 1)
    height, width = digit.shape
    total = max(float(digit.sum()), 1e-6)
    centre_y = float((digit.sum(axis=1) * (np.arange(height) + 0.5)).sum()) / total
    centre_x = float((digit.sum(axis=0) * (np.arange(width) + 0.5)).sum()) / total
    top = int(min(max(round(MNIST_SIZE / 2 - centre_y), 0), MNIST_SIZE - height))
    left = int(min(max(round(MNIST_SIZE / 2 - centre_x), 0), MNIST_SIZE - width))
    pixels = np.zeros((canvas, canvas), dtype=np.float32)
    offset = (canvas - MNIST_SIZE) // 2  # the 28x28 field in the middle of a larger canvas
    pixels[offset + top : offset + top + height, offset + left : offset + left + width] = digit
    where = (working_scale, (int(cols[0]), int(rows[0])), digit_scale, (offset + left, offset + top))
    return pixels, inverted, where


def prepare(image: Image.Image | np.ndarray, canvas: int = 28, invert: bool | None = None) -> np.ndarray:
    """(1, 1, canvas, canvas) float32 pixels in [0, 1], white digit on black, ready for the model.
    `image`: a PIL image, or (H, W) grey levels in [0, 1]; `invert`: None detects dark ink on
    light paper from the border. ValueError if no digit stands out from the paper."""
    grey = grey_levels(image) if isinstance(image, Image.Image) else np.asarray(image, dtype=np.float32)
    return place(grey, canvas, invert)[0][None, None]
