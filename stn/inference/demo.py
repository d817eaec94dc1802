"""A page where you draw a digit (or upload a photo of one) and watch the transformer at work.

    python -m stn.demo                                 # the zoo's stn_mnist on http://127.0.0.1:7860
    python -m stn.demo model_name=stn_rts port=7861    # any zoo name, or ckpt_path=<run>/checkpoints/x.ckpt

It shows the input as the model sees it (brought to its canvas as `stn.predict` does) with the
region the transformer sampled drawn in red, what the classifier saw, the top 3 with their
probabilities and theta. "A test digit of its own data" draws a random digit from the model's own
test set: rotated, scaled and shifted for RTS, lost in clutter on a 60x60 canvas for TC. An input
that holds no digit, or a file that is not an image, gets a sentence on the page and the server
goes on. Built with Gradio (the `demo` extra: pip install -e ".[demo]").
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from stn.data.images import grey_levels, read_grey, to_canvas
from stn.errors import ConfigError, UserError, check_value, integers
from stn.inference.predict import picture, read_canvas
from stn.loading import TrainedModel, trained_model

log = logging.getLogger(__name__)

Shown = tuple[Image.Image | None, dict[str, float] | None, str]  # (picture, top classes, details)
TEST_DIGITS = 1000  # the test digits the button draws from (the first of the model's test set)


def drawn_grey(drawing: Any) -> torch.Tensor:
    """(H, W) grey levels in [0, 1] of what Gradio's sketchpad holds (its composite: strokes on
    a transparent sheet, which goes onto white paper, as a photo's)."""
    composite = drawing.get("composite") if isinstance(drawing, dict) else drawing
    if composite is None:
        raise UserError("no digit found: the canvas is empty; draw a digit with the mouse")
    return torch.from_numpy(grey_levels(Image.fromarray(np.asarray(composite))).copy())


def shown(model: TrainedModel, canvas_pixels: torch.Tensor, source: str) -> Shown:
    """The page's outputs for one canvas ((1, S, S) pixels in [0, 1], white on black)."""
    seen = read_canvas(model, canvas_pixels, top_k=3)
    caption = f"{source}: {seen['prediction']} ({100 * seen['probability']:.1f}%)"
    sheet = picture(model, canvas_pixels, seen["seen"], seen["theta"], caption)
    theta = seen["theta"]
    if theta is None:
        details = "This model has no transformer: the classifier sees the whole canvas."
    else:
        rows = theta[0] if theta.dim() == 3 else theta.reshape(1, -1)  # (2, 3) affine, (3, 3), or TPS
        matrix = "\n".join("  ".join(f"{float(v):+.3f}" for v in row) for row in rows)
        details = f"theta ({'x'.join(str(n) for n in theta.shape[1:])}):\n```\n{matrix}\n```"
    corners = ", ".join(f"({float(x):.1f}, {float(y):.1f})" for x, y in seen["region_canvas"])
    details += f"\n\nSampled region's corners on the {model.canvas}x{model.canvas} canvas: {corners}"
    return sheet, {str(digit): probability for digit, probability in seen["top"]}, details


def refused(error: Exception) -> Shown:
    """An input the model cannot look at: a sentence on the page, nothing else."""
    return None, None, f"**{error}**"


class Demo:
    """The page's three ways in, each from a model it loaded once."""

    def __init__(self, model: TrainedModel, data_dir: str) -> None:
        self.model, self.data_dir = model, data_dir
        self._test_set: Any = None
        self.last_label: int | None = None  # the true class of the last test digit drawn

    def from_drawing(self, drawing: Any) -> Shown:
        try:
            pixels, _, _ = to_canvas(drawn_grey(drawing), self.model.canvas, invert=None)
        except UserError as error:
            return refused(error)
        return shown(self.model, pixels, "your drawing")

    def from_upload(self, path: str | None) -> Shown:
        if not path:
            return refused(UserError("no file: upload a photo or scan of a digit"))
        try:
            pixels, inverted, _ = to_canvas(read_grey(Path(path)), self.model.canvas, invert=None)
        except UserError as error:
            return refused(UserError(str(error).replace(str(path), Path(path).name)))
        return shown(self.model, pixels, Path(path).name + (", inverted" if inverted else ""))

    def test_digit(self) -> Shown:
        """A random digit of the model's own test set, as its data makes it (no re-centring)."""
        try:
            if self._test_set is None:
                datamodule = self.model.datamodule(
                    data_dir=self.data_dir, test_subset=TEST_DIGITS, download=True
                )
                datamodule.prepare_data()
                datamodule.setup("test")
                self._test_set = datamodule.test_set
        except UserError as error:
            return refused(error)
        index = random.randrange(len(self._test_set))
        images, labels = self._test_set.batch(slice(index, index + 1))  # (1, 1, S, S) normalised
        pixels = (images[0] * self.model.std + self.model.mean).clamp(0, 1)  # (1, S, S)
        self.last_label = int(labels[0])
        return shown(self.model, pixels, f"test digit {index} (a {self.last_label})")


UPLOADS_KEPT_S = 600


def page(demo: Demo, title: str) -> Any:
    """The Gradio page (a `gr.Blocks`); its events are also an HTTP API (/drawing, /upload, /test_digit)."""
    import gradio as gr

    distortion = demo.model.data_config.get("distortion") or {}
    data_name = f"MNIST, {str(distortion.get('_target_', '')).rsplit('.', 1)[-1]}" if distortion else "MNIST"
    # uploads and drawings land in Gradio's cache: each is deleted UPLOADS_KEPT_S after it came (checked
    # every minute), so a page left running does not keep every file it was ever given
    with gr.Blocks(title=title, delete_cache=(60, UPLOADS_KEPT_S)) as blocks:
        gr.Markdown(
            f"## {title}\nDraw a digit, upload a photo of one, or take a test digit of the model's own "
            f"data. Left: the input on the model's {demo.model.canvas}x{demo.model.canvas} canvas, "
            "the region the transformer sampled in red; right: what the classifier saw."
        )
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tab("Draw"):
                    drawing = gr.Sketchpad(
                        label="draw a digit", type="numpy", image_mode="RGBA", canvas_size=(280, 280),
                        brush=gr.Brush(default_size=18, colors=["#000000"], color_mode="fixed"),
                    )  # fmt: skip
                with gr.Tab("Upload"):
                    upload = gr.File(
                        label="a photo or scan of one digit", file_types=["image"], type="filepath"
                    )
                test_button = gr.Button(f"A random test digit of its own data ({data_name})")
            with gr.Column(scale=2):
                sheet = gr.Image(label="input (red: where the transformer looked) | what the classifier saw")
                top = gr.Label(label="top 3", num_top_classes=3)
                details = gr.Markdown(label="details")  # the API names each output by its label
        outputs = [sheet, top, details]
        drawing.change(demo.from_drawing, drawing, outputs, api_name="drawing")
        upload.upload(demo.from_upload, upload, outputs, api_name="upload")
        test_button.click(demo.test_digit, None, outputs, api_name="test_digit")
        blocks.load(demo.test_digit, None, outputs, api_name=False)  # the page opens with an example
    return blocks


def serve(cfg: DictConfig) -> None:
    port = check_value("port", cfg.get("port", 7860), integers(1, 65535))
    max_upload = check_value("max_upload_mb", cfg.get("max_upload_mb", 20), integers(1, 1024))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError('the demo page needs Gradio, the demo extra: pip install -e ".[demo]"') from None
    ckpt_path = cfg.get("ckpt_path")  # a checkpoint named on the command line wins over the default zoo name
    model = trained_model(
        OmegaConf.create({"ckpt_path": ckpt_path, "model_name": None if ckpt_path else cfg.get("model_name")})
    )
    blocks = page(Demo(model, str(cfg.paths.data_dir)), f"stn: {model.name}")
    log.info("Demo of %s on http://%s:%d (Ctrl-C stops it)", model.name, cfg.host, port)
    try:
        blocks.launch(
            server_name=str(cfg.host), server_port=port, max_file_size=f"{max_upload}mb", footer_links=["api"]
        )
    except OSError as error:
        raise ConfigError(
            f"port={port} cannot be served on host={cfg.host} ({error}); pick another port"
        ) from None
