"""Resuming: which checkpoint a run resumes from, and a run killed with SIGKILL that resumes and
loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from stn.errors import ConfigError
from stn.runs.resume import resume_point

from .conftest import (
    ROOT,
    SMALL,
    cli_command,
    cli_env,
    run,
)


def test_resume_point(tmp_path: Path):
    outputs = tmp_path / "outputs"
    earlier, now = outputs / "a", outputs / "b"
    for folder, overrides in ((earlier, ["seed=1", "ckpt_path=last"]), (now, ["seed=1"])):
        (folder / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    # nothing to resume yet
    assert resume_point(None, now, outputs, ["seed=1"]) == (None, now)
    with pytest.raises(ConfigError, match="ckpt_path=last: no earlier run of this command"):
        resume_point("last", now, outputs, ["seed=1", "ckpt_path=last"])
    (earlier / "checkpoints").mkdir()
    (earlier / "checkpoints" / "last.ckpt").write_bytes(b"")
    # the same command (ckpt_path aside) finds the earlier run and goes on in its folder
    assert resume_point("last", now, outputs, ["ckpt_path=last", "seed=1"]) == (
        str(earlier / "checkpoints" / "last.ckpt"),
        earlier,
    )
    with pytest.raises(ConfigError):  # another command's run is not this one's
        resume_point("last", now, outputs, ["seed=2", "ckpt_path=last"])
    # a requeued job: its own folder has a last checkpoint, found without asking
    assert resume_point(None, earlier, outputs, []) == (str(earlier / "checkpoints" / "last.ckpt"), earlier)
    with pytest.raises(ConfigError, match="ckpt_path=nowhere.ckpt does not exist"):
        resume_point("nowhere.ckpt", now, outputs, [])


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_and_loses_nothing(tmp_path: Path, mnist_dir: Path):
    outputs = tmp_path / "outputs"
    command = cli_command(
        "stn.train",
        *SMALL,
        "data.train_subset=16384",
        "data.batch_size=32",  # 512 steps an epoch: long enough to be killed inside one
        "trainer.max_epochs=3",
        f"paths.log_dir={outputs}",
    )
    env = cli_env(mnist_dir)
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(outputs.glob("train/runs/*/checkpoints/last.ckpt")):  # the first epoch has ended
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.2)
    time.sleep(0.5)  # into the second epoch
    first.send_signal(signal.SIGKILL)
    first.wait()
    (run_dir,) = [p.parents[1] for p in outputs.glob("train/runs/*/checkpoints/last.ckpt")]
    before = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    killed_at = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert killed_at["epoch"] < 2 and not (run_dir / "metrics.json").exists()

    resumed = subprocess.run([*command, "ckpt_path=last"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"the run goes on in {run_dir}" in resumed.stderr + resumed.stdout
    log = (run_dir / "train.log").read_text()  # the run's own log says it resumed, and from which epoch
    epoch = killed_at["epoch"]
    assert f"written after epoch {epoch}: training goes on with epoch {epoch + 1}" in log
    assert list(outputs.glob("train/runs/*")) == [run_dir]  # one run, one folder: no folder per start
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # three epochs in all, as the uninterrupted run: none lost, none repeated (the checkpoint is
    # written in on_train_epoch_end, after `processed` counts the epoch and before `completed` does)
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 3
    assert last["epoch"] == 2 and last["global_step"] == 3 * 512
    after = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert Path(metrics["best_model_path"]).name in after and "last.ckpt" in after
    # the checkpoints written before the kill are still there unless a better epoch replaced them
    assert before - after <= {name for name in before if name.startswith("epoch_")}


@pytest.mark.slow
def test_last_checkpoint_holds_the_last_epoch_even_without_improvement(tmp_path: Path, mnist_dir: Path):
    """`last.ckpt` is what a killed run resumes from: it must hold the last epoch, not the best one.
    At lr 1e-12 only the first epoch improves val/acc; the other two must still reach last.ckpt."""
    run_dir = tmp_path / "run"
    run(
        "stn.train",
        *SMALL,
        "trainer.max_epochs=3",
        "model.optimizer.lr=1e-12",
        "model.scheduler=null",
        f"hydra.run.dir={run_dir}",
        data_dir=mnist_dir,
    )
    steps_per_epoch = 2048 // 64
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 * steps_per_epoch
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 3
    # the best checkpoint is still the first epoch's, and the final test used it
    best = json.loads((run_dir / "metrics.json").read_text())["best_model_path"]
    assert Path(best).name == "epoch_000.ckpt"


def test_only_where_and_how_fast_a_run_goes_may_differ_on_resume():
    from omegaconf import OmegaConf

    from stn.runs.resume import config_differences

    saved = OmegaConf.create({
        "ckpt_path": None, "num_threads": None, "seed": 0,
        "paths": {"log_dir": "/here/outputs", "output_dir": "/here/outputs/run"},
        "data": {"data_dir": "/here/data", "batch_size": 64},
        "trainer": {"devices": 2, "max_epochs": 20},
        "model": {"optimizer": {"lr": 0.01}},
        "callbacks": {"hparams": {"overrides": ["seed=0"]}},
    })  # fmt: skip
    current = saved.copy()
    current.num_threads, current.trainer.devices, current.ckpt_path = 2, 1, "last"
    current.data.data_dir, current.paths.log_dir = "/elsewhere/data", "/elsewhere/outputs"
    current.callbacks.hparams.overrides = ["seed=0", "ckpt_path=last"]
    assert config_differences(saved, current) == []
    current.model.optimizer.lr, current.data.batch_size = 0.5, 128  # what it trains
    assert config_differences(saved, current) == ["data.batch_size", "model.optimizer.lr"]
