"""Export a trained STN to a file that runs without this project: ONNX (onnxruntime, any language)
or TorchScript (PyTorch alone).

    python -m stn.export ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt format=onnx
    python -m stn.export model_name=stn_mnist format=torchscript

The exported model takes `pixels`, (N, 1, S, S) float32 in [0, 1] (`input=float`) or uint8 0..255
(`input=uint8`: an 8-bit grey image's values as read), white digit on black, on the model's
canvas S (28; 42 RTS; 60 TC), normalises them as in training, and returns `logits`
(N, 10) and, with a transformer, `theta` (N, P): its parameters, flattened (6 affine, 9 for the
projective 3x3 matrix, 2 per control point for TPS). Every sampling grid is built from plain tensor
operations (stn/geometry.py) and sampled with grid_sample (ONNX GridSample, opset 16+), so all
three transformers export (TorchScript is deprecated in PyTorch in favour of torch.export and warns
so; its files still load wherever PyTorch runs). After writing, the file is run on real MNIST test
images and compared with PyTorch; the largest difference is printed and saved beside it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from stn.data import prepare_canvas
from stn.errors import Allowed, ConfigError, UserError, check_value, integers, one_of
from stn.loading import TrainedModel, trained_model
from stn.models.pixels import PixelClassifier
from stn.utils.files import write_atomically

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
OPSET = 18


# what the exported file takes: `float` pixels in [0, 1], or raw `uint8` pixels 0..255 (an 8-bit
# grey image's own values), the normalisation inside the graph either way
INPUTS = {
    "float": "pixels (N, 1, S, S) float32 in [0, 1], white digit on black, S the canvas",
    "uint8": "pixels (N, 1, S, S) uint8 0..255 (an 8-bit grey image), white digit on black, S the canvas",
}


class PixelsToPrediction(PixelClassifier):
    """(N, 1, S, S) pixels (float in [0, 1], or uint8 0..255 with `raw`) -> logits (N, classes) and
    theta (N, P): the hub's PixelClassifier (normalisation inside, contiguous memory format, which
    exporters expect) on a copy of the network, returning theta beside the logits."""

    def __init__(self, network: nn.Module, mean: float, std: float, canvas: int, raw: bool = False) -> None:
        super().__init__(copy.deepcopy(network), mean, std, canvas)
        self.raw = raw
        self.eval()  # dropout off: the exported model is for inference

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.raw:
            pixels = pixels.to(torch.float32) / 255
        seen, theta = self.network.transform(self.normalise(pixels))  # no value checks in the exported graph
        logits = self.network.classifier(seen)
        if theta is None:  # the CNN baseline
            return (logits,)
        return logits, theta.flatten(1)  # (N, classes), (N, P)


def output_names(model: TrainedModel) -> list[str]:
    return ["logits"] if model.network.transformer is None else ["logits", "theta"]


def export_onnx(wrapper: PixelsToPrediction, example: torch.Tensor, path: Path, names: list[str]) -> None:
    for name in ("onnxscript", "onnx_ir"):  # the exporter's passes log at INFO: not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        wrapper, (example,), input_names=["pixels"], output_names=names, opset_version=OPSET,
        dynamo=True, dynamic_shapes=({0: batch},), verbose=False,
    )  # fmt: skip
    program.save(str(path))


def export_torchscript(wrapper: PixelsToPrediction, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example)
    traced.save(str(path))


def run_exported(path: Path, pixels: torch.Tensor) -> list[torch.Tensor]:
    """The exported file's outputs on `pixels`, run the way a user without this project would."""
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(output) for output in session.run(None, {"pixels": pixels.numpy()})]
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return list(loaded(pixels))


def test_pixels(model: TrainedModel, data_dir: str, count: int) -> torch.Tensor:
    """`count` real MNIST test digits on the model's canvas, as pixels in [0, 1]."""
    datamodule = model.datamodule(data_dir=data_dir, test_subset=count, download=True)
    datamodule.prepare_data()
    datamodule.setup("test")
    images, _ = datamodule.test_set.batch(slice(0, count))  # normalised
    return images * model.std + model.mean


def largest_difference(wrapper: PixelsToPrediction, path: Path, pixels: torch.Tensor) -> float:
    with torch.no_grad():
        expected = wrapper(pixels)
    exported = run_exported(path, pixels)
    return max(float((got - want).abs().max()) for got, want in zip(exported, expected, strict=True))


def check_output(path: Path, report: Path, fmt: str, overwrite: bool) -> None:
    """Before anything is written: the model file can be written at `path`, and no existing file
    (the model or its `report`) is replaced unless `overwrite=true` says so."""
    ending = Allowed(
        lambda p: p.suffix == FORMATS[fmt], f"a file name ending in {FORMATS[fmt]}", f"format={fmt}"
    )
    check_value("output_file", path, ending)
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"output_file={path} cannot be written: {parent} is a file, not a folder")
    if path.is_dir():
        raise ConfigError(f"output_file={path} is a folder; name a file ending in {FORMATS[fmt]}")
    existing = [str(p) for p in (path, report) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "choose another output_file, or pass overwrite=true to replace"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"output_file={path} cannot be written ({error.strerror or error})") from None


def copy_canvas_preparation(folder: Path, overwrite: bool) -> Path:
    """stn/data/prepare_canvas.py (NumPy and PIL only) into the export's run folder, so a deployment
    prepares its images as stn.predict does without this project; a different file of that name
    is kept unless `overwrite`."""
    source = Path(prepare_canvas.__file__)
    target = folder / source.name
    if target.exists() and target.read_bytes() != source.read_bytes() and not overwrite:
        log.warning("%s exists and differs from this project's; kept (overwrite=true replaces it)", target)
        return target
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return target


def export(cfg: DictConfig) -> dict[str, object]:
    fmt = str(check_value("format", cfg.get("format"), one_of(*FORMATS)))
    check_value("input", cfg.get("input", "float"), one_of(*INPUTS))
    check_images = check_value("check_images", cfg.get("check_images", 256), integers(0))
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise UserError(
                f"format=onnx needs the export extra ({error.name} is not installed): "
                "pip install -e '.[export]'"
            ) from None
    model = trained_model(cfg)
    stem = Path(str(cfg.model_name or cfg.ckpt_path)).stem
    # the file goes where the user names it (relative: to the folder the command runs in); unnamed,
    # into this export's run folder. Its report and prepare_canvas.py stay in the run folder.
    run_dir = Path(cfg.paths.output_dir)
    path = Path(str(cfg.output_file)) if cfg.output_file else run_dir / f"{stem}{FORMATS[fmt]}"
    path = path if path.is_absolute() else Path.cwd() / path
    report_path = run_dir / f"{path.stem}.json"
    check_output(path, report_path, fmt, bool(cfg.get("overwrite", False)))
    raw = str(cfg.get("input", "float")) == "uint8"
    wrapper = PixelsToPrediction(model.network, model.mean, model.std, model.canvas, raw=raw)
    example = torch.rand(2, 1, model.canvas, model.canvas)
    if raw:
        example = (example * 255).to(torch.uint8)
    names = output_names(model)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # beside it: a rename is atomic
    try:
        if fmt == "onnx":
            export_onnx(wrapper, example, partial, names)
        else:
            export_torchscript(wrapper, example, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    report: dict[str, object] = {
        "model": model.name, "file": str(path), "format": fmt, "inputs": INPUTS["uint8" if raw else "float"],
        "canvas": model.canvas, "outputs": names, "bytes": path.stat().st_size,
    }  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    report["prepare"] = str(copy_canvas_preparation(run_dir, bool(cfg.get("overwrite", False))))
    if check_images:
        pixels = test_pixels(model, str(cfg.data_dir), check_images)
        if raw:
            pixels = (pixels * 255).round().clamp(0, 255).to(torch.uint8)
        report["checked_on"] = f"{len(pixels)} MNIST test images"
        report["largest_difference"] = largest_difference(wrapper, path, pixels)
    write_atomically(report_path, json.dumps(report, indent=2))
    log.info("Exported %s to %s\n%s", model.name, path, json.dumps(report, indent=2))
    log.info("The model: %s; its report and prepare_canvas.py: %s", path, run_dir)
    return report
