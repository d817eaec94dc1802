"""Predict the digits in your own images with a trained STN, and see where its transformer looked.

    python -m stn.predict ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt inputs=my_digits/
    python -m stn.predict model_name=stn_mnist inputs='scans/*.jpg' invert=auto

For each image: the predicted class and its probability, the top 3, the transformer's parameters
(theta), the four corners of the region it sampled in the image's own pixels (`region`: through
the scaling and centring that brought the image to the canvas; `region_canvas`: on the canvas),
and a picture: the image as brought to the model's canvas (stn/data/images.py) with the
region the transformer sampled drawn on it, beside what the classifier saw; and both of those at
their own resolution (`<name>.input.png`, the model's input; `<name>.crop.png`, the warped crop).
All results also go to predictions.csv and predictions.json in the run folder. An image that
cannot be read, or holds no digit, is one line of the results with its error; the others still run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from stn.data.images import ImageError, image_files, read_grey, to_canvas
from stn.errors import Allowed, ConfigError, UserError, check_value, integers
from stn.geometry import canvas_corners, to_pixels
from stn.loading import TrainedModel, trained_model
from stn.pictures import enlarged_grey, grey_image
from stn.utils.files import csv_text, write_atomically

log = logging.getLogger(__name__)

PANEL = 224  # the pictures' panels, in pixels
RED = (230, 40, 40)
MARGIN = (96, 96, 96)  # around the canvas: outside the image
CAPTION = 18  # the caption band's height


def sampled_outline(model: TrainedModel, theta: torch.Tensor | None) -> list[tuple[float, float]]:
    """The outline of the transformer's sampling grid, in the input canvas's pixel coordinates
    (x, y), going round the output's border pixels: for affine, projective and TPS alike."""
    canvas = model.canvas
    transformer = model.network.transformer
    if transformer is None or theta is None:  # the CNN sees the whole canvas
        return [(0, 0), (canvas, 0), (canvas, canvas), (0, canvas)]
    height, width = transformer.output_size or (canvas, canvas)
    grid = transformer.sampling_grid(theta, (1, 1, height, width))[0]  # (H, W, 2) normalised (x, y)
    border = torch.cat([grid[0, :], grid[:, -1], grid[-1, :].flip(0), grid[:, 0].flip(0)])  # (P, 2)
    pixels = to_pixels(border, canvas, canvas, transformer.align_corners)
    return [(float(x), float(y)) for x, y in pixels]


def region_corners(model: TrainedModel, theta: torch.Tensor | None) -> torch.Tensor:
    """(4, 2) the corners of the region the transformer sampled, in the canvas's pixels (x, y),
    in `canvas_corners`' order (top-left, top-right, bottom-right, bottom-left of its output):
    exact for affine and projective theta; for a spline, the output's corner pixels' centres."""
    canvas = model.canvas
    transformer = model.network.transformer
    if transformer is None or theta is None:  # the CNN sees the whole canvas
        return to_pixels(canvas_corners(), canvas, canvas)
    return to_pixels(
        transformer.region_corners(theta, (canvas, canvas))[0], canvas, canvas, transformer.align_corners
    )


def picture(
    model: TrainedModel,
    canvas_pixels: torch.Tensor,
    seen: torch.Tensor,
    theta: torch.Tensor | None,
    caption: str,
) -> Image.Image:
    """The input canvas with the sampled region in red, beside what the classifier saw, captioned.
    The canvas sits in a grey margin a quarter of its size, so a region that reaches past the
    canvas (a transformer zooming out or shifting) shows where it goes."""
    canvas, right = enlarged_grey(canvas_pixels[0], PANEL), enlarged_grey(seen[0], PANEL)
    scale = PANEL / model.canvas
    region = sampled_outline(model, theta)
    # the margin grows with a region that reaches past the canvas (up to two canvases), so that
    # its frame is drawn whole
    overflow = max(0.0, *(max(-x, -y, x - model.canvas, y - model.canvas) for x, y in region)) * scale
    margin = min(max(PANEL // 4, math.ceil(overflow) + 4), 2 * PANEL)
    left = Image.new("RGB", (canvas.width + 2 * margin, canvas.height + 2 * margin), MARGIN)
    left.paste(canvas, (margin, margin))
    outline = [(margin + x * scale, margin + y * scale) for x, y in region]
    ImageDraw.Draw(left).line([*outline, outline[0]], fill=RED, width=2)
    gap = 8
    height = left.height
    sheet = Image.new("RGB", (left.width + gap + right.width, height + 2 * CAPTION), "white")
    sheet.paste(left, (0, CAPTION))
    sheet.paste(right, (left.width + gap, CAPTION + (height - right.height) // 2))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 3), f"input, {model.canvas}x{model.canvas} (red: where it looked)", fill="black")
    draw.text((left.width + gap + 4, 3), "what the classifier saw", fill="black")
    draw.text((4, height + CAPTION + 3), caption, fill="black")
    return sheet


def picture_names(files: list[Path]) -> dict[Path, str]:
    """A name for each input's pictures, unique among the inputs: the file's stem where no other
    input shares it, else its path below the inputs' common folder (`a/x.png` -> `a_x.png`), so
    that no input's pictures overwrite another's."""
    stems = [path.stem for path in files]
    if len(set(stems)) == len(stems):
        return dict(zip(files, stems, strict=True))
    common = Path(os.path.commonpath([path.absolute().parent for path in files]))
    return {
        path: str(path.absolute().relative_to(common)).replace(os.sep, "_").replace(".", "_")
        for path in files
    }


@torch.no_grad()
def read_canvas(model: TrainedModel, canvas_pixels: torch.Tensor, top_k: int) -> dict[str, Any]:
    """What the model makes of one canvas ((1, S, S) pixels in [0, 1], white on black): the
    prediction, the top `top_k`, theta, the sampled region's corners on the canvas, and what the
    classifier saw (`seen`, (1, h, w) pixels in [0, 1]). Predict and the demo page both use it."""
    images = ((canvas_pixels - model.mean) / model.std)[None]  # (1, 1, S, S) normalised as in training
    seen, theta = model.network.transform(images)
    probabilities = model.network.classifier(seen).softmax(dim=1)[0]  # (classes,)
    top = probabilities.topk(min(top_k, probabilities.numel()))
    return {
        "prediction": int(top.indices[0]),
        "probability": float(top.values[0]),
        "top": [[int(i), round(float(p), 6)] for i, p in zip(top.indices, top.values, strict=True)],
        "theta": theta,
        "region_canvas": region_corners(model, theta),  # (4, 2)
        "seen": (seen[0] * model.std + model.mean).clamp(0, 1),  # back to [0, 1] pixels
    }


@torch.no_grad()
def predict_image(
    model: TrainedModel, path: Path, invert: bool | None, top_k: int, out_dir: Path, name: str
) -> dict[str, Any]:
    """One image's prediction and pictures (written to `out_dir` as `<name>.*.png`)."""
    canvas_pixels, inverted, placement = to_canvas(read_grey(path), model.canvas, invert)  # (1, S, S)
    seen = read_canvas(model, canvas_pixels, top_k)
    theta, on_canvas = seen["theta"], seen["region_canvas"]
    picture_file = out_dir / f"{name}.stn.png"
    caption = f"{path.name}: {seen['prediction']} ({100 * seen['probability']:.1f}%)" + (
        ", inverted" if inverted else ""
    )
    picture(model, canvas_pixels, seen["seen"], theta, caption).save(picture_file)
    # at native resolution: the model's input (white on black, its canvas) and the warped crop
    canvas_file, crop_file = out_dir / f"{name}.input.png", out_dir / f"{name}.crop.png"
    grey_image(canvas_pixels[0]).save(canvas_file)
    grey_image(seen["seen"][0]).save(crop_file)
    return {
        "file": str(path),
        "prediction": seen["prediction"],
        "probability": round(seen["probability"], 6),
        "top": seen["top"],
        "theta": [round(float(v), 6) for v in theta.flatten()] if theta is not None else [],
        "region": [[round(float(x), 2), round(float(y), 2)] for x, y in placement.to_image(on_canvas)],
        "region_canvas": [[round(float(x), 3), round(float(y), 3)] for x, y in on_canvas],
        "inverted": inverted,
        "picture": str(picture_file),
        "input": str(canvas_file),
        "crop": str(crop_file),
        "error": "",
    }


def _invert_option(value: Any) -> bool | None:
    if value in ("auto", None):
        return None
    return check_value("invert", value, Allowed(lambda v: isinstance(v, bool), "auto | true | false"))


def _csv_row(r: dict[str, Any], top_k: int) -> dict[str, Any]:
    """One image's row of predictions.csv (an unreadable image: its file and error)."""
    return {
        "file": r["file"],
        "prediction": r.get("prediction", ""),
        "probability": r.get("probability", ""),
        f"top{top_k}": " ".join(f"{i}:{p:.4f}" for i, p in r.get("top", [])),
        "theta": " ".join(f"{v:.5f}" for v in r.get("theta", [])),
        "region": " ".join(f"{x:.2f} {y:.2f}" for x, y in r.get("region", [])),
        "inverted": r.get("inverted", ""),
        "picture": r.get("picture", ""),
        "input": r.get("input", ""),
        "crop": r.get("crop", ""),
        "error": r["error"],
    }


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    invert = _invert_option(cfg.get("invert", "auto"))
    top_k = check_value("top_k", cfg.get("top_k", 3), integers(1))
    if not cfg.get("inputs"):
        raise ConfigError("inputs is required: an image file, a folder of images, or a glob ('digits/*.png')")
    files = image_files(str(cfg.inputs))
    if not files:
        raise ConfigError(f"inputs={cfg.inputs} names no file (a file, a folder of images, or a glob)")
    model = trained_model(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    names = picture_names(files)
    # each image's row is written as it comes, so a stopped run keeps every prediction made so far
    # (predictions.partial.csv); the whole set is renamed to predictions.csv when the last is done
    partial = out_dir / "predictions.partial.csv"
    with partial.open("w", newline="") as table:
        table.write(csv_text([list(_csv_row({"file": "", "error": ""}, top_k))]))
        try:
            for path in files:
                try:
                    result = predict_image(model, path, invert, top_k, out_dir, names[path])
                    log.info("%s: %d (%.1f%%)", path, result["prediction"], 100 * result["probability"])
                except ImageError as error:
                    log.warning("%s: %s", path, error)
                    result = {"file": str(path), "error": str(error)}
                results.append(result)
                table.write(csv_text([list(_csv_row(result, top_k).values())]))
                table.flush()
        except BaseException:
            done = f"{len(results)} of {len(files)}"
            log.warning("stopped after %s images; their predictions are in %s", done, partial)
            raise
    write_atomically(
        out_dir / "predictions.json", json.dumps({"model": model.name, "predictions": results}, indent=2)
    )
    os.replace(partial, out_dir / "predictions.csv")
    done = sum(1 for r in results if not r["error"])
    log.info("%d of %d images predicted; results in %s", done, len(results), out_dir / "predictions.csv")
    if not done:
        raise UserError(
            f"none of the {len(results)} images could be predicted (the first: {results[0]['error']}); "
            f"each one's error is in {out_dir / 'predictions.csv'}"
        )
    return results
