import io
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stn.callbacks import TransformGridLogger, TransformHealth
from stn.pictures import BAND

from .conftest import TINY, run


def test_grid_logger_writes_images_that_read_back(cfg_train, tmp_path: Path):
    datamodule = instantiate(cfg_train.data)
    model = instantiate(cfg_train.model)
    logger = L.pytorch.loggers.TensorBoardLogger(save_dir=str(tmp_path), name="tb", version="")
    callback = TransformGridLogger(num_images=16, nrow=4, mean=0.1307, std=0.3081)
    trainer = L.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        callbacks=[callback],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=datamodule)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    images = events.Images("val/transformed")
    assert len(images) == 2  # one per validation epoch, none for the sanity check
    # 16 images in a 4x4 grid of 28+2 px cells, twice side by side, each under its caption
    assert images[0].height == BAND + 4 * 30 + 2 and images[0].width == 2 * (4 * 30 + 2) + 4
    picture = np.asarray(Image.open(io.BytesIO(images[0].encoded_image_string)).convert("L"))
    half = 4 * 30 + 2
    for caption in (
        picture[:BAND, :half],
        picture[:BAND, half + 4 :],
    ):  # the words "input", "transformed: ..."
        assert (caption < 100).sum() > 20
    assert {"val/theta_distance_from_identity", "val/theta_scale"} <= set(events.Tags()["scalars"])
    # the training as an animation: the same 8 digits at every epoch, in the run folder and TensorBoard
    strip = Image.open(tmp_path / "transform_history.png")
    assert strip.height == 3 * (28 + 2 * 2)  # rows: input, epoch 0, epoch 1
    gif = Image.open(tmp_path / "transform_history.gif")
    assert gif.n_frames == 2
    assert len(events.Images("val/transform_history")) == 1


@pytest.mark.slow
def test_transform_health_logs_figures_and_stays_quiet_on_a_healthy_run(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    process = run("stn.train", *TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", data_dir=mnist_dir)
    assert "transform collapse" not in process.stderr + process.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.5 < metrics["transform/scale"] < 1.5 and metrics["transform/outside_fraction"] < 0.1
    assert 0.5 < metrics["transform/background_fraction"] < 0.95  # MNIST digits: ~80% background
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    histograms = set(events.Tags()["histograms"])
    for figure in ("scale", "rotation", "shear", "translation", "outside_fraction", "background_fraction"):
        assert f"transform_spread/{figure}" in histograms
        assert len(events.Histograms(f"transform_spread/{figure}")) == 2  # one per validation epoch
    scalars = set(events.Tags()["scalars"])
    assert "val/acc" in scalars and "epoch" not in scalars  # no `epoch` card first in Scalars


@pytest.mark.slow
def test_a_collapsing_transformer_raises_the_alarm_and_can_stop_the_run(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    process = run(
        "stn.train", *TINY, "trainer.max_epochs=3", "model.localization_lr_scale=300",  # loc. lr 3
        "callbacks.transform_health.stop_on_collapse=true", f"hydra.run.dir={run_dir}", data_dir=mnist_dir,
    )  # fmt: skip
    output = process.stderr + process.stdout
    assert (
        output.count("transform collapse in epoch 0") == 1 and "epoch 1" not in output.split("collapse")[-1]
    )
    assert "localization net's learning rate too high" in output and "The run stops here" in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["transform/outside_fraction"] > 0.5 and "test/acc" in metrics  # stopped, then tested
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # of the 3 epochs asked for


def test_each_threshold_names_its_breach():
    health = TransformHealth()
    healthy = {"scale": 1.0, "outside_fraction": 0.0, "background_fraction": 0.8, "theta_finite": 1.0}
    assert health.breaches(healthy) == []
    for change, words in (
        ({"scale": 3.0}, "zooms out"),
        ({"scale": 0.1}, "zooms into a speck"),
        ({"outside_fraction": 0.8}, "80% of its sampling grid is outside"),
        ({"background_fraction": 0.99}, "99.0% of its output is background"),
        ({"theta_finite": 0.5}, "theta is not finite"),
    ):
        (breach,) = health.breaches({**healthy, **change})
        assert words in breach


@pytest.mark.slow
def test_every_logger_and_the_rich_screens_run_offline(tmp_path: Path, mnist_dir: Path):
    run_dir, log_dir = tmp_path / "run", tmp_path / "outputs"
    process = run(
        "stn.train", *TINY, "logger=many", "callbacks=rich", f"paths.log_dir={log_dir}",
        f"hydra.run.dir={run_dir}", data_dir=mnist_dir,
    )  # fmt: skip
    assert "RichModelSummary" not in process.stderr and "┃ Name" in process.stdout + process.stderr
    assert "train/acc" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()["scalars"]
    (val_acc,) = (log_dir / "mlruns").rglob("metrics/val/acc")  # one run, its val/acc per epoch
    assert val_acc.read_text().strip()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert any(offline.glob("*.wandb"))
    tree = (run_dir / "config_tree.log").read_text()  # the composed config, printed at start and kept
    assert tree.startswith("CONFIG") and "├── model" in tree and "RichProgressBar" in tree


def test_a_run_that_learns_nothing_says_so_once(cfg_train, caplog):
    from stn.training import train

    cfg_train.model.optimizer.lr = 1e-30
    cfg_train.trainer.max_epochs = 2
    with caplog.at_level("WARNING", logger="stn.callbacks.stalled_loss"):
        train(cfg_train)
    warnings = [r.getMessage() for r in caplog.records if "is not learning" in r.getMessage()]
    assert len(warnings) == 1 and "(model.optimizer.lr=1e-30)" in warnings[0]
    caplog.clear()
    cfg_train.model.optimizer.lr = 0.01  # a run that learns, in a folder of its own: no line
    cfg_train.paths.output_dir = str(Path(cfg_train.paths.output_dir) / "learns")
    cfg_train.trainer.max_epochs = 1
    with caplog.at_level("WARNING", logger="stn.callbacks.stalled_loss"):
        train(cfg_train)
    assert not [r for r in caplog.records if "is not learning" in r.getMessage()]


def test_tensorboard_shows_what_was_logged_with_its_default_loader(finished_run: Path):
    """A histogram's tag is its own (the default loader hides one that shares its scalar's tag),
    and the HParams metrics start at their first real value, not at a placeholder 0."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(
        str(finished_run / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert "transform_spread/scale" in tags["histograms"]
    assert not set(tags["histograms"]) & set(tags["scalars"])
    declared = set()
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("experiment"):
            declared |= {m.name.tag for m in data.experiment.metric_infos}
    assert {"hp/val/acc_best", "hp/test/acc"} <= declared
    for tag in ("hp/val/acc_best", "hp/test/acc"):
        values = [event.value for event in events.Scalars(tag)]
        assert values and all(value > 0 for value in values)  # no placeholder 0.0


def test_the_hparams_tab_lists_the_command_lines_keys_first():
    """A sweep's parameters are keys of its jobs' command lines: they come first in the tab, before
    the choices and the config's usual (mostly constant) keys, and their values win."""
    from stn.callbacks import HParamsLogger

    logger = HParamsLogger(
        choices={"data": "mnist", "model": "stn"},
        hparams={"data": {"batch_size": 64, "train_subset": None}, "model": {"optimizer": {"lr": 0.01}}},
        overrides=["model.optimizer.lr=0.003", "seed=1", "model=cnn", "hydra.run.dir=x"],
        run_dir="outputs/train/multiruns/2026-12-07_21-00-00/3_model.optimizer.lr=0.003",
    )
    assert list(logger.hparams)[:3] == ["run", "model.optimizer.lr", "seed"]
    assert logger.hparams["run"] == "3_model.optimizer.lr=0.003"
    assert logger.hparams["model.optimizer.lr"] == 0.003 and logger.hparams["data"] == "mnist"
    assert "hydra.run.dir" not in logger.hparams and "data.train_subset" not in logger.hparams
