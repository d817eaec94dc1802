"""Photo-like images of digits for docs/predict.md: a digit in one of several typefaces, size,
rotation and colour, somewhere on a larger sheet of paper (or a dark board), with uneven light,
sensor noise and JPEG compression. Seeded, so the same files come out every time.

    python docs/predict/make_photos.py docs/predict/photos
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
TYPEFACES = ["DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "STIXGeneralItalic.ttf",
             "cmr10.ttf", "DejaVuSans-BoldOblique.ttf"]  # fmt: skip
# (digit, typeface, light paper?) for each photo
PHOTOS = [
    (7, 0, True),
    (2, 1, True),
    (4, 2, True),
    (3, 3, False),
    (9, 4, True),
    (5, 5, True),
    (1, 4, False),
    (8, 1, True),
]


def photo(digit: int, typeface: str, light_paper: bool, rng: random.Random) -> Image.Image:
    width, height = rng.randint(220, 360), rng.randint(200, 300)
    paper = (
        (rng.randint(215, 245), rng.randint(210, 240), rng.randint(190, 225)) if light_paper else (40, 58, 48)
    )
    ink = (rng.randint(10, 60), rng.randint(10, 50), rng.randint(60, 120)) if light_paper else (235, 235, 225)
    size = rng.randint(80, 150)
    glyph = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(glyph).text((size, size), str(digit), font=ImageFont.truetype(str(FONTS / typeface), size),
                               fill=255, anchor="mm")  # fmt: skip
    glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.BICUBIC)
    glyph = glyph.crop(glyph.getbbox())
    sheet = Image.new("RGB", (width, height), paper)
    left = rng.randint(0, max(0, width - glyph.width))
    top = rng.randint(0, max(0, height - glyph.height))
    sheet.paste(Image.new("RGB", glyph.size, ink), (left, top), glyph.filter(ImageFilter.GaussianBlur(1.2)))
    pixels = np.asarray(sheet, dtype=np.float32)
    light = np.linspace(rng.uniform(0.75, 0.9), 1.05, width)[None, :, None]  # uneven light across the sheet
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 7, pixels.shape)
    return Image.fromarray(np.clip(pixels * light + noise, 0, 255).astype(np.uint8))


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2015)
    for number, (digit, face, light_paper) in enumerate(PHOTOS):
        name = f"photo{number}_digit{digit}.jpg"
        photo(digit, TYPEFACES[face], light_paper, rng).save(out_dir / name, quality=85)
        print(out_dir / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "photos")
