"""Shared fixtures: a data dir holding the real MNIST files, and configs composed with Hydra's compose API."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torchvision.datasets import MNIST

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
RAW_FILES = [name for name, _ in MNIST.resources]


def _mnist_source() -> Path:
    """Where the official MNIST files are on this machine: $STN_MNIST_RAW, ../shared (CI), data/,
    or, failing those, torchvision's download into data/."""
    candidates = [
        os.environ.get("STN_MNIST_RAW"),
        ROOT.parent / "shared/data/MNIST/raw",
        ROOT / "data/MNIST/raw",
    ]
    for candidate in candidates:
        if candidate and all((Path(candidate) / name).is_file() for name in RAW_FILES):
            return Path(candidate)
    try:  # a machine with internet: torchvision's own download into the project's data/
        MNIST(ROOT / "data", train=True, download=True)
        MNIST(ROOT / "data", train=False, download=True)
        return ROOT / "data/MNIST/raw"
    except RuntimeError:
        pass
    raise RuntimeError(
        f"The tests need the four official MNIST files ({', '.join(RAW_FILES)}); none of "
        f"{[str(c) for c in candidates if c]} holds them. Set STN_MNIST_RAW to their folder."
    )


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with MNIST/raw/ filled from the download cache, as a user's would be."""
    data_dir = tmp_path_factory.mktemp("data")
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        shutil.copy(_mnist_source() / name, raw / name)
    return data_dir


def compose_config(config_name: str = "train.yaml", overrides: list[str] | None = None) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name, overrides=overrides or [], return_hydra_config=True)


def small_run(cfg: DictConfig, output_dir: Path, data_dir: Path) -> DictConfig:
    """Point a composed config at a temporary run folder, the test data and a small subset."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.data.data_dir = str(data_dir)
        cfg.data.train_subset = 512
        cfg.data.test_subset = 256
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_val_batches = 2
        if cfg.get("callbacks") and "progress_bar" in cfg.callbacks:
            cfg.callbacks.progress_bar.refresh_rate = 0
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture
def cfg_train(tmp_path: Path, mnist_dir: Path) -> DictConfig:
    cfg = compose_config("train.yaml")
    yield small_run(cfg, tmp_path, mnist_dir)
    GlobalHydra.instance().clear()
