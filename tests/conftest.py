"""Shared fixtures: a data dir holding the real MNIST files, and configs composed with Hydra's compose API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torchvision.datasets import MNIST

from stn.environment import set_up
from stn.paths import CONF_DIR, ROOT
from stn.utils.checks import check_config
from stn.utils.instantiators import build, build_model

# the template's RunIf: tests of the CUDA path run where there is a GPU and are skipped elsewhere;
# every other test pins trainer.accelerator=cpu, so the suite means the same on both machines
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

RAW_FILES = [name for name, _ in MNIST.resources]

set_up()  # the resolvers the configs read, as every entry point sets them


@pytest.fixture(autouse=True)
def _launching_a_process_is_slow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that launches a Python process (a command, a server, a worker script) must be marked
    `slow`, which leaves it out of the fast lane: outside `slow` tests, starting one fails the test
    at once, so the fast lane stays fast by construction. (Libraries' own short calls, `uname`,
    `lscpu`, still run.)"""
    if request.node.get_closest_marker("slow") is not None:
        return
    popen_init = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        program = Path(str(args[0] if isinstance(args, list | tuple) else args).split()[0]).name
        if program.startswith("python") or program == Path(sys.executable).name:
            raise AssertionError(
                f"{request.node.nodeid} launches a Python process ({' '.join(map(str, args))[:200]}): "
                "mark it @pytest.mark.slow"
            )
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


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


def check_and_build(cfg: DictConfig) -> None:
    """What a run does with its config before training: the start-of-run checks, then building the
    data and the model, whose constructors check their own values (stn/errors.py)."""
    check_config(cfg)
    build(cfg, "data")
    build_model(cfg)


def small_run(cfg: DictConfig, output_dir: Path, data_dir: Path, sizes: bool = True) -> DictConfig:
    """Point a composed config at a temporary run folder, the test data and (with `sizes`; else
    the overrides it was composed with say) a small subset."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)  # where loggers that keep one store write (logger=mlflow)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.data.data_dir = str(data_dir)
        if not sizes:
            HydraConfig().set_config(cfg)
            return cfg
        cfg.data.train_subset = 512
        cfg.data.test_subset = 256
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.max_epochs = 1
        cfg.trainer.limit_val_batches = 2
        if cfg.get("callbacks") and "progress_bar" in cfg.callbacks:
            cfg.callbacks.progress_bar.refresh_rate = 0
    HydraConfig().set_config(cfg)
    return cfg


def write_hydra_record(cfg: DictConfig, run_dir: Path) -> None:
    """What a Hydra app writes to `<run>/.hydra/` before its task runs: the task's config, Hydra's
    own node and the command line's overrides, with their interpolations as written."""
    record = run_dir / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.to_container(cfg, resolve=False)
    hydra_node = task.pop("hydra")
    OmegaConf.save(OmegaConf.create(task), record / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_node}), record / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(cfg.hydra.overrides.task)), record / "overrides.yaml")


def train_in_process(overrides: list[str], run_dir: Path, data_dir: Path) -> dict:
    """`python -m stn.train <overrides> hydra.run.dir=<run_dir>`, in this process: the run folder
    as the command leaves it (its `.hydra/` record, checkpoints, logs, metrics.json)."""
    from stn.training import train

    cfg = small_run(compose_config("train.yaml", overrides), run_dir, data_dir, sizes=False)
    write_hydra_record(cfg, run_dir)
    try:
        return train(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """One finished one-epoch run folder (last.ckpt, the best epoch, metrics.json, TensorBoard and
    CSV logs), trained once per test session in process. Tests that only read it share it; a test
    that changes it works on a copy (`shutil.copytree`)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train_in_process(FINISHED, run_dir, mnist_dir)
    return run_dir


@pytest.fixture
def cfg_train(tmp_path: Path, mnist_dir: Path) -> DictConfig:
    cfg = compose_config("train.yaml")
    yield small_run(cfg, tmp_path, mnist_dir)
    GlobalHydra.instance().clear()


# a few batches of real MNIST on the CPU: the subprocess tests' base overrides
SMALL = [
    "data.train_subset=2048",
    "data.test_subset=256",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=2",
    "callbacks.progress_bar.refresh_rate=0",
]


def cli_command(module: str, *overrides: str) -> list[str]:
    """`python -m <module> <overrides>`, as a researcher runs it."""
    return [sys.executable, "-m", module, *overrides]


def cli_env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "STN_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}


def run(
    module: str, *overrides: str, data_dir: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run an entry point in a subprocess from the project root, on `data_dir`'s MNIST (`env`: more
    environment variables)."""
    process = subprocess.run(
        cli_command(module, *overrides),
        cwd=ROOT,
        env={**cli_env(data_dir), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and process.returncode != 0:
        pytest.fail(f"{module} {' '.join(overrides)} exited {process.returncode}:\n{process.stderr[-4000:]}")
    return process


def assert_one_sentence_error(process: subprocess.CompletedProcess, message: str) -> None:
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert message in process.stderr


def run_rejected(module: str, *overrides: str, data_dir: Path, message: str) -> None:
    """Run an entry point that must stop with one sentence containing `message`."""
    assert_one_sentence_error(run(module, *overrides, data_dir=data_dir, check=False), message)


def multirun(
    *overrides: str, sweep: Path, data_dir: Path, check: bool = True
) -> tuple[subprocess.CompletedProcess, list[Path]]:
    """`python -m stn.train --multirun <overrides>` into `sweep`: the process and the job folders."""
    process = run(
        "stn.train", "--multirun", *overrides, f"hydra.sweep.dir={sweep}", data_dir=data_dir, check=check
    )
    return process, jobs_of(sweep) if sweep.is_dir() else []


def eval_command(checkpoint: Path, *overrides: str, run_dir: Path, data_dir: Path) -> str:
    """`python -m stn.eval ckpt_path=<checkpoint>` on 256 test images on the CPU: its output."""
    return run(
        "stn.eval", f"ckpt_path={checkpoint}", "data.test_subset=256", "trainer.accelerator=cpu",
        *overrides, f"hydra.run.dir={run_dir}", data_dir=data_dir,
    ).stdout  # fmt: skip


TINY = [*SMALL, "data.train_subset=512", "trainer.limit_val_batches=1"]
# the session's shared run (`finished_run`): one small epoch of the default STN
FINISHED = [*TINY, "data.test_subset=128"]


def jobs_of(sweep: Path) -> list[Path]:
    """A multirun's job folders (`<job number>_<overrides>`), in job order."""
    numbered = [p for p in sweep.iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()]
    return sorted(numbered, key=lambda p: int(p.name.split("_")[0]))
