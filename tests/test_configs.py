import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning import LightningDataModule, LightningModule, Trainer
from omegaconf import DictConfig

from stn.errors import ConfigError
from stn.utils.checks import check_config
from stn.utils.instantiators import build_model, instantiate_group

from .conftest import CONF_DIR, check_and_build, compose_config, small_run


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


GROUP_OVERRIDES = [
    f"{group}={option}"
    for group in (
        "data",
        "model",
        "model/optimizer",
        "model/scheduler",
        "callbacks",
        "logger",
        "trainer",
        "debug",
        "experiment",
        "hparams_search",
    )
    for option in options(group)
]


def instantiate_all(cfg: DictConfig) -> None:
    assert isinstance(instantiate(cfg.data), LightningDataModule)
    assert isinstance(instantiate(cfg.model), LightningModule)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    assert isinstance(instantiate(cfg.trainer, callbacks=callbacks, logger=loggers), Trainer)


def test_every_group_has_options():
    for group in ("data", "model", "callbacks", "logger", "trainer", "paths", "hydra", "debug", "experiment"):
        assert options(group), group
    assert {"stn", "cnn"} <= set(options("model"))
    assert {"sgd", "adam"} <= set(options("model/optimizer"))
    assert {"default", "cpu", "gpu"} <= set(options("trainer"))


@pytest.mark.parametrize("override", GROUP_OVERRIDES)
def test_every_config_composes_and_instantiates(override: str, tmp_path: Path, mnist_dir: Path):
    cfg = compose_config("train.yaml", [override])
    wants_gpu = override in ("trainer=gpu", "trainer=ddp")
    if wants_gpu and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu asks for a CUDA GPU"):
            check_config(cfg)
        return
    accelerator = cfg.trainer.accelerator
    cfg = small_run(cfg, tmp_path, mnist_dir)
    if wants_gpu:  # on a GPU machine: built as asked, not on the CPU
        cfg.trainer.accelerator = accelerator
    check_config(cfg)
    instantiate_all(cfg)


def test_eval_config_composes(tmp_path: Path, mnist_dir: Path):
    cfg = small_run(compose_config("eval.yaml", ["ckpt_path=some.ckpt"]), tmp_path, mnist_dir)
    assert cfg.ckpt_path == "some.ckpt"
    instantiate(cfg.model)
    instantiate(cfg.trainer)


def test_tutorial_experiment_is_the_tutorial():
    cfg = compose_config("train.yaml", ["experiment=tutorial"])
    assert cfg.model.optimizer.lr == 0.01 and cfg.model.optimizer.momentum == 0.0
    assert cfg.model.scheduler is None and cfg.model.localization_lr_scale == 1.0
    assert cfg.data.batch_size == 64 and cfg.trainer.max_epochs == 20
    assert cfg.model.localization.depth == 2


def test_cnn_has_no_localization():
    model = instantiate(compose_config("train.yaml", ["model=cnn"]).model)
    assert model.net.transformer is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.localization.depth=4", r"model.localization.depth=4 is out of range: allowed 1\.\.3"),
        ("model.localization.depth=0", r"model.localization.depth=0 is out of range: allowed 1\.\.3"),
        ("model.optimizer.lr=-0.01", r"model.optimizer.lr=-0.01 is out of range: allowed > 0"),
        ("data.batch_size=0", r"data.batch_size=0 is out of range"),
        ("data.val_size=60000", r"data.val_size=60000 is out of range: allowed integers 1\.\.59999"),
    ],
)
def test_bad_values_are_rejected_with_the_key_and_range(override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        check_and_build(compose_config("train.yaml", [override]))


def test_deeper_localization_fits_a_larger_input():
    cfg = compose_config("train.yaml", ["data=mnist_cluttered", "model.localization.depth=4"])
    check_and_build(cfg)
    model = build_model(cfg)
    theta = model.net.transformer.localization(torch.zeros(2, 1, 60, 60))  # TC's 60x60 canvas
    assert theta.shape[0] == 2  # four conv blocks still leave a feature map on the larger canvas
    with pytest.raises(ConfigError, match="model.localization.depth=4 is out of range"):
        check_and_build(compose_config("train.yaml", ["model.localization.depth=4"]))  # 28x28: too small


def fit_briefly(cfg: DictConfig, **trainer_options) -> Trainer:
    trainer = Trainer(
        accelerator="cpu", limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **trainer_options,
    )  # fmt: skip
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    return trainer


def test_fast_experiment_fills_the_one_cycle_from_the_run(tmp_path: Path, mnist_dir: Path):
    cfg = small_run(compose_config("train.yaml", ["experiment=fast"]), tmp_path, mnist_dir)
    cfg.data.train_subset = 768  # 3 batches of 256
    assert cfg.model.scheduler.total_steps is None and cfg.model.scheduler.max_lr is None
    trainer = fit_briefly(cfg, max_epochs=2, limit_train_batches=3)
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step"
    assert config.scheduler.total_steps == 6  # 2 epochs x 3 batches of 256
    peaks = {group["name"]: group["max_lr"] for group in config.scheduler.optimizer.param_groups}
    lr, scale = cfg.model.optimizer.lr, cfg.model.localization_lr_scale
    assert peaks == {"classifier": pytest.approx(lr), "localization": pytest.approx(lr * scale)}


def test_one_cycle_survives_a_run_shorter_than_its_warm_up(tmp_path: Path, mnist_dir: Path):
    cfg = small_run(compose_config("train.yaml", ["experiment=fast"]), tmp_path, mnist_dir)
    trainer = fit_briefly(cfg, max_epochs=1, limit_train_batches=1)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 5  # floor(1 / pct_start 0.25) + 1


@pytest.mark.parametrize("model", ["stn", "stn_proj", "stn_tps", "st_fcn"])
def test_on_tc_transformers_sample_a_smaller_view_the_classifier_is_sized_for(model: str):
    cfg = compose_config("train.yaml", ["data=mnist_cluttered", f"model={model}"])
    check_config(cfg)
    net = instantiate(cfg.model).net
    images = torch.zeros(2, 1, 60, 60)
    transformed, _ = net.transform(images)
    assert transformed.shape == (2, 1, 30, 30)
    assert net(images).shape == (2, 10)
    baseline = compose_config("train.yaml", ["data=mnist_cluttered", "model=cnn"])
    assert baseline.model.classifier.image_size == 60  # no transformer: the classifier sees the canvas


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.classifier.image_size=28"], "image_size=28 does not match what the classifier sees: "
         "model.transformer.output_size=30"),
        (["model.localization=null"], "image_size=30 does not match what the classifier sees: "
         "the data's 60x60 canvas (no transformer)"),
    ],
)  # fmt: skip
def test_a_classifier_sized_for_other_images_is_rejected(overrides: list[str], message: str):
    cfg = compose_config("train.yaml", ["data=mnist_cluttered", "model=stn", *overrides])
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    assert message in str(error.value)


def test_paper_schedule_gives_tc_more_epochs():
    from hydra.core.hydra_config import HydraConfig

    for data, epochs in (("mnist_rts", 4), ("mnist_cluttered", 8)):
        cfg = compose_config("train.yaml", ["experiment=paper", f"data={data}", "model=stn"])
        HydraConfig().set_config(cfg)
        assert cfg.trainer.max_epochs == epochs
        assert cfg.model.optimizer._target_ == "torch.optim.Adam"


@pytest.mark.parametrize(("experiment", "jobs"), [("paper_grid", 8 * 5 * 3), ("paper_grid_cpu", 2 * 2 * 3)])
def test_the_paper_grid_is_one_command(experiment: str, jobs: int):
    cfg = compose_config("train.yaml", [f"experiment={experiment}"])
    params = cfg.hydra.sweeper.params
    assert math.prod(len(str(params[key]).split(",")) for key in ("data", "model", "seed")) == jobs
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.model.optimizer._target_ == "torch.optim.Adam"  # the paper recipe underneath


@pytest.mark.parametrize("debug", ["fdr", "limit", "overfit", "profiler"])
def test_a_debug_config_keeps_the_device_the_trainer_asked_for(debug: str):
    assert compose_config("train.yaml", ["trainer=gpu", f"debug={debug}"]).trainer.accelerator == "gpu"
