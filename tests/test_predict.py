"""Using a trained STN: predicting on image files, the region the transformer sampled, export to
ONNX and TorchScript, and the model zoo."""

import csv
import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont
from torchvision.datasets import MNIST

from stn.data.images import ImageError, read_grey, to_canvas
from stn.inference.export import PixelsToPrediction, export_onnx, export_torchscript, run_exported
from stn.inference.predict import sampled_outline
from stn.inference.zoo import accuracy_on_test_set
from stn.loading import ZOO_DIR, TrainedModel, sha256, zoo_manifest, zoo_model
from stn.utils.instantiators import build

from .conftest import compose_config, run, run_rejected

ZOO = zoo_manifest()
PHOTOS = ZOO_DIR.parent / "docs" / "predict" / "photos"  # photo-like digits (docs/predict/make_photos.py)


@pytest.fixture(scope="module")
def mnist_test_digits(mnist_dir: Path) -> list[tuple[Image.Image, int]]:
    dataset = MNIST(mnist_dir, train=False, download=True)
    return [dataset[index] for index in range(20)]


@pytest.mark.slow
def test_predict_on_image_files_with_a_zoo_model(tmp_path: Path, mnist_dir: Path, mnist_test_digits):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index, (image, label) in enumerate(mnist_test_digits):
        if index % 2:  # dark ink on light paper, a larger JPEG, as a scan would be
            paper = Image.eval(image, lambda value: 255 - value).resize((112, 112), Image.BICUBIC)
            paper.convert("RGB").save(inputs / f"digit{index:02d}_label{label}.jpg", quality=90)
        else:
            image.save(inputs / f"digit{index:02d}_label{label}.png")
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (inputs / "empty.jpg").write_bytes(b"")
    Image.new("L", (64, 64), 255).save(inputs / "blank.png")
    run_dir = tmp_path / "run"
    run(
        "stn.predict",
        "model_name=stn_mnist",
        f"inputs={inputs}",
        f"hydra.run.dir={run_dir}",
        data_dir=mnist_dir,
    )
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    assert len(rows) == 23
    errors = {Path(row["file"]).name: row["error"] for row in rows if row["error"]}
    assert errors.keys() == {"corrupt.png", "empty.jpg", "blank.png"}
    assert "empty file" in errors["empty.jpg"] and "no digit found" in errors["blank.png"]
    predicted = [row for row in rows if not row["error"]]
    correct = sum(
        int(row["prediction"]) == int(Path(row["file"]).stem.split("label")[1]) for row in predicted
    )
    assert correct >= 19  # a 99% model on digits brought back to MNIST's own form
    for row in predicted:
        assert (row["inverted"] == "True") == row["file"].endswith(".jpg")
        assert len(row["theta"].split()) == 6 and len(row["top3"].split()) == 3
        assert Image.open(row["picture"]).size[0] > 2 * 224
    results = json.loads((run_dir / "predictions.json").read_text())
    assert results["model"] == "stn_mnist" and len(results["predictions"]) == 23


@pytest.mark.slow
def test_a_model_of_a_distorted_variant_predicts_on_its_own_canvas(
    tmp_path: Path, mnist_dir: Path, mnist_test_digits
):
    image, label = mnist_test_digits[0]
    image.save(tmp_path / "digit.png")
    run_dir = tmp_path / "run"
    run("stn.predict", "model_name=stn_tc", f"inputs={tmp_path / 'digit.png'}", f"hydra.run.dir={run_dir}",
        data_dir=mnist_dir)  # fmt: skip
    (result,) = json.loads((run_dir / "predictions.json").read_text())["predictions"]
    assert result["prediction"] == label
    assert zoo_model("stn_tc").canvas == 60


def _drawn_digit(canvas_size: tuple[int, int], light_paper: bool) -> Image.Image:
    paper, ink = ((235, 230, 220), (20, 20, 90)) if light_paper else ((30, 40, 35), (240, 240, 230))
    image = Image.new("RGB", canvas_size, paper)
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), 60)
    ImageDraw.Draw(image).text((30, 20), "4", font=font, fill=ink)
    return image.rotate(10, fillcolor=paper)


@pytest.mark.parametrize("light_paper", [True, False])
def test_a_drawn_digit_comes_to_the_canvas_as_mnist_digits_are(light_paper: bool):
    grey = torch.from_numpy(
        np.asarray(_drawn_digit((240, 160), light_paper).convert("L"), dtype=np.float32) / 255
    )
    pixels, inverted, _ = to_canvas(grey, 28)
    assert inverted == light_paper
    assert pixels.shape == (1, 28, 28) and pixels.max() == pytest.approx(1.0, abs=0.05)
    ink = pixels[0] > 0.2
    rows, cols = torch.nonzero(ink.any(1)).flatten(), torch.nonzero(ink.any(0)).flatten()
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (19, 20, 21)  # the 20-pixel box
    mass = pixels[0] / pixels[0].sum()
    centre = ((mass.sum(1) * (torch.arange(28) + 0.5)).sum(), (mass.sum(0) * (torch.arange(28) + 0.5)).sum())
    assert all(abs(float(c) - 14) <= 1 for c in centre)  # centre of mass at the centre
    pixels42, _, _ = to_canvas(grey, 42)  # a 42x42 model: the same 28x28 digit in the middle
    torch.testing.assert_close(pixels42[:, 7:35, 7:35], pixels)
    with pytest.raises(ImageError, match="no digit found"):
        to_canvas(torch.full((50, 50), 0.9), 28)


def _model(name: str) -> TrainedModel:
    """An untrained model of config `name` whose transformer is not the identity."""
    cfg = compose_config("train.yaml", [f"model={name}", "trainer.accelerator=cpu"])
    module = build(cfg, "model").eval()
    transformer = module.net.transformer
    if transformer is not None:
        torch.manual_seed(0)
        with torch.no_grad():
            transformer.head.weight.normal_(0, 0.02)
            transformer.head.bias.add_(torch.randn_like(transformer.head.bias) * 0.05)
    return TrainedModel(name, module, cfg.model, cfg.data)


@pytest.mark.parametrize("name", ["stn", "stn_proj", "stn_tps"])
def test_the_sampled_outline_of_the_identity_is_the_canvas(name: str):
    model = _model(name)
    theta = model.network.transformer.to_theta(model.network.transformer.identity()[None])
    outline = torch.tensor(sampled_outline(model, theta))  # the border pixels' centres
    assert outline.min() == pytest.approx(0.5, abs=1e-4) and outline.max() == pytest.approx(27.5, abs=1e-4)
    zoom = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]])
    if name == "stn":
        half = torch.tensor(sampled_outline(model, zoom))
        assert half.min() == pytest.approx(7.25, abs=1e-4) and half.max() == pytest.approx(20.75, abs=1e-4)


# ONNX export takes seconds a model (and importing onnx more): the fast lane exports each model to
# TorchScript; the ONNX exports run in the whole suite
@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        *((name, "torchscript") for name in ("stn", "stn_proj", "stn_tps", "cnn")),
        *(
            pytest.param(name, "onnx", marks=pytest.mark.slow)
            for name in ("stn", "stn_proj", "stn_tps", "cnn")
        ),
    ],
)
def test_exported_models_agree_with_pytorch_on_real_digits(
    tmp_path: Path, mnist_test_digits, name: str, fmt: str
):
    model = _model(name)
    wrapper = PixelsToPrediction(model.network, model.mean, model.std, model.canvas)
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None] for image, _ in mnist_test_digits]
    )
    path = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    names = ["logits"] if model.network.transformer is None else ["logits", "theta"]
    if fmt == "onnx":
        export_onnx(wrapper, pixels[:2], path, names)
    else:
        export_torchscript(wrapper, pixels[:2], path)
    with torch.no_grad():
        expected = wrapper(pixels)  # 20 images: another batch size than the export's example
    exported = run_exported(path, pixels)
    assert len(exported) == len(names)
    for got, want in zip(exported, expected, strict=True):
        assert float((got - want).abs().max()) < 1e-4


@pytest.mark.slow
def test_export_command_reports_the_largest_difference(tmp_path: Path, mnist_dir: Path):
    out = tmp_path / "stn.onnx"
    run(
        "stn.export", "model_name=stn_rts", f"output_file={out}", "check_images=64",
        f"hydra.run.dir={tmp_path}", data_dir=mnist_dir,
    )  # fmt: skip
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["canvas"] == 42 and report["outputs"] == ["logits", "theta"]
    assert report["largest_difference"] < 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inputs=nowhere/*.png", "model_name=stn_mnist"], "inputs=nowhere/*.png names no file"),
        ([f"inputs={PHOTOS}", "model_name=no_such_model"], "model_name=no_such_model is not in the zoo"),
        ([f"inputs={PHOTOS}", "model_name=stn_mnist", "ckpt_path=x.ckpt"], "name one model"),
        ([f"inputs={PHOTOS}", "model_name=stn_mnist", "invert=maybe"], "invert=maybe is out of range"),
    ],
)
@pytest.mark.slow
def test_predict_rejects_bad_input_with_one_sentence(tmp_path: Path, mnist_dir: Path, overrides, message):
    run_rejected("stn.predict", *overrides, f"hydra.run.dir={tmp_path}", data_dir=mnist_dir, message=message)


def test_the_zoo_holds_the_models_it_promises():
    assert {"stn_mnist", "cnn_mnist", "stn_mnist_aug", "cnn_mnist_aug", "stn_rts", "stn_tc"} <= ZOO.keys()
    for entry in ZOO.values():
        assert entry["command"].startswith("python -m stn.train")
        assert 50_000 < entry["bytes"] < 1_000_000  # small enough to keep in git


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_each_zoo_model_loads_and_scores_its_manifest_accuracy(name: str, mnist_dir: Path):
    entry = ZOO[name]
    assert sha256(ZOO_DIR / entry["weights"]) == entry["sha256"]
    accuracy = accuracy_on_test_set(zoo_model(name), mnist_dir)  # the full test set of the model's own data
    assert abs(accuracy - entry["test_acc"]) <= 0.0005  # within 0.05 points


@pytest.mark.slow
def test_eval_scores_a_zoo_model_on_its_own_data(tmp_path: Path, mnist_dir: Path):
    output = run(
        "stn.eval", "model_name=stn_rts", "data.test_subset=256", "trainer.accelerator=cpu",
        f"hydra.run.dir={tmp_path}", data_dir=mnist_dir,
    ).stdout  # fmt: skip
    accuracy = re.search(r'"test/acc": ([0-9.]+)', output)
    assert accuracy and float(accuracy.group(1)) > 0.9  # 42x42 RTS digits: the model's own test set
    # its record: the metrics, and what was tested (not the command's default data and model)
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == float(accuracy.group(1))
    tested = OmegaConf.load(tmp_path / "evaluated.yaml")
    assert tested.data.image_size == 42 and tested.model_name == "stn_rts"
    run_rejected(
        "stn.eval", "model_name=stn_rts", "ckpt_path=x.ckpt", f"hydra.run.dir={tmp_path / 'both'}",
        data_dir=mnist_dir, message="name one model",
    )  # fmt: skip


@pytest.mark.slow  # an ONNX export and 100 sessions: seconds
def test_a_raw_pixel_onnx_file_reads_a_png_as_pil_gives_it(
    tmp_path: Path, mnist_dir: Path, mnist_test_digits
):
    """input=uint8: the 8-bit values of a PNG, read with PIL, go straight in; no normalising by hand."""
    import onnxruntime

    from stn.inference.export import export

    cfg = compose_config("export.yaml", ["model_name=stn_mnist", "input=uint8", "check_images=16"])
    cfg.output_file, cfg.data_dir = str(tmp_path / "raw.onnx"), str(mnist_dir)
    cfg.paths.output_dir = str(tmp_path / "run")  # the export's run folder: its report
    report = export(cfg)
    assert (
        report["inputs"].startswith("pixels (N, 1, S, S) uint8 0..255")
        and report["largest_difference"] < 1e-4
    )
    session = onnxruntime.InferenceSession(str(tmp_path / "raw.onnx"), providers=["CPUExecutionProvider"])
    correct = 0
    for index, (image, label) in enumerate(mnist_test_digits):
        image.save(tmp_path / f"{index}.png")
        pixels = np.asarray(Image.open(tmp_path / f"{index}.png"))[None, None]  # (1, 1, 28, 28) uint8
        assert pixels.dtype == np.uint8
        logits = session.run(None, {"pixels": pixels})[0]
        correct += int(logits.argmax() == label)
    assert correct >= 19  # of 20 test digits (the zoo model scores 99.4%)


def test_a_canvas_position_maps_back_to_the_images_own_pixels():
    """A block of ink at a known place in a large photo (scaled down, cropped, scaled, centred on
    the canvas): the placed block's corners map back to where the block is in the photo."""
    photo = torch.ones(1000, 800)  # white paper, 1000 high, 800 wide
    photo[200:600, 300:500] = 0.0  # dark ink: x 300..500, y 200..600
    pixels, inverted, placement = to_canvas(photo, 42)
    assert inverted
    ink = pixels[0] > 0.5
    rows, cols = torch.nonzero(ink.any(1)).flatten(), torch.nonzero(ink.any(0)).flatten()
    placed = torch.tensor([[cols[0], rows[0]], [cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32)
    torch.testing.assert_close(placement.to_image(placed), torch.tensor([[300.0, 200.0], [500.0, 600.0]]),
                               atol=6.0, rtol=0)  # fmt: skip


@pytest.mark.parametrize("name", ["stn", "stn_proj", "stn_tps", "cnn"])
def test_predict_gives_the_sampled_region_in_the_images_pixels(tmp_path: Path, name: str):
    """At the identity the region is the whole canvas, and in the image's pixels it is the
    canvas's corners mapped back through the placement."""
    from stn.inference.predict import predict_image

    model = _model(name)
    if model.network.transformer is not None:
        with torch.no_grad():
            model.network.transformer.head.weight.zero_()
            model.network.transformer.head.bias.copy_(model.network.transformer.identity())
    Image.fromarray(np.asarray(_drawn_digit((240, 160), True))).save(tmp_path / "four.png")
    result = predict_image(model, tmp_path / "four.png", None, 3, tmp_path, "four")
    region_canvas = torch.tensor(result["region_canvas"])
    if name == "stn_tps":  # the corner pixels' centres
        expected = torch.tensor([[0.5, 0.5], [27.5, 0.5], [27.5, 27.5], [0.5, 27.5]])
    else:
        expected = torch.tensor([[0.0, 0.0], [28.0, 0.0], [28.0, 28.0], [0.0, 28.0]])
    torch.testing.assert_close(region_canvas, expected, atol=1e-3, rtol=0)
    grey = read_grey(tmp_path / "four.png")
    _, _, placement = to_canvas(grey, 28)
    torch.testing.assert_close(
        torch.tensor(result["region"]), placement.to_image(expected), atol=0.01, rtol=0
    )
    # the canvas is larger than the digit's 20-pixel box: its region reaches past the digit
    (left, top), (right, bottom) = result["region"][0], result["region"][2]
    assert right - left > 0 and bottom - top > 0


@pytest.mark.parametrize("canvas", [28, 42])
def test_the_numpy_canvas_preparation_is_predicts_own(canvas: int, tmp_path: Path):
    """stn/data/prepare_canvas.py (what stn.export puts beside an exported model: NumPy and PIL only)
    is predict's own canvas preparation: from a PIL image, photos, drawings and a large scan come
    out as stn.predict makes them from their files."""
    from stn.data.prepare_canvas import prepare

    images = [*sorted(PHOTOS.glob("*.jpg"))[:4]]
    for index, light_paper in enumerate((True, False)):
        _drawn_digit((240, 160), light_paper).save(tmp_path / f"drawn{index}.png")
        images.append(tmp_path / f"drawn{index}.png")
    Image.open(images[0]).resize((1260, 980), Image.BICUBIC).save(tmp_path / "scan.png")  # > 512 px
    images.append(tmp_path / "scan.png")
    for path in images:
        ours, _, _ = to_canvas(read_grey(path), canvas)
        numpy_only = prepare(Image.open(path), canvas)
        assert numpy_only.shape == (1, 1, canvas, canvas) and numpy_only.dtype == np.float32
        np.testing.assert_allclose(numpy_only[0], ours.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="no digit found"):
        prepare(Image.new("L", (50, 50), 230))


def test_a_region_past_the_canvas_is_drawn_whole():
    """A transformer zooming out 2x samples a region twice the canvas: the picture's grey margin
    grows so that the red frame is inside it."""
    from stn.inference.predict import RED, picture

    model = _model("stn")
    zoom_out = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    pixels = torch.zeros(1, 28, 28)
    sheet = np.asarray(picture(model, pixels, pixels, zoom_out, "x").convert("RGB"))
    red = np.all(sheet == np.array(RED), axis=-1)
    rows, cols = np.nonzero(red)
    assert rows.min() > 0 and cols.min() > 0  # not cut at the sheet's edge
    frame_width = cols.max() - cols.min()
    assert frame_width > 1.9 * 224  # about two canvases wide, all of it drawn
