"""Sweeps that scale: the Optuna sweeper, the joblib and submitit launchers, DDP on 2 CPU processes,
the sweep summary, the checks that stop a bad sweep before it starts, and a run killed with
SIGKILL that resumes. Small subsets of real MNIST, one epoch or less."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stn.data.mnist import DeviceBatches, EpochShuffle, InMemoryImages
from stn.summarize import main as summarize
from stn.utils.checks import ConfigError
from stn.utils.parallel import JobShare, concurrent_jobs, job_share
from stn.utils.resume import resume_point

from .conftest import ROOT
from .test_train import SMALL, assert_one_sentence_error, run

TINY = [*SMALL, "data.train_subset=512", "trainer.limit_val_batches=1"]


def jobs_of(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def test_optuna_sweep_maximises_the_metric_and_resumes_its_study(tmp_path: Path, mnist_dir: Path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [
        "hparams_search=optuna",
        *TINY,
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=test",
        "hydra.sweeper.sampler.n_startup_trials=2",
    ]
    for sweep, trials in (("a", 2), ("b", 1)):
        run(
            "stn.train",
            *common,
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweep.dir={tmp_path / sweep}",
            data_dir=mnist_dir,
        )

    study = optuna.load_study(study_name="test", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3  # 2, then 1 more
    assert set(study.best_params) == {
        "model.optimizer.lr",
        "model.localization.depth",
        "model.optimizer.weight_decay",
        "data.batch_size",
    }
    for trial in study.trials:
        assert 1e-3 <= trial.params["model.optimizer.lr"] <= 0.1
        assert trial.params["model.localization.depth"] in (1, 2, 3)
    # the value the sweeper saw is the job's val/acc_best
    best_job = [
        json.loads((job / "metrics.json").read_text())["val/acc_best"]
        for sweep in ("a", "b")
        for job in jobs_of(tmp_path / sweep)
    ]
    assert study.best_value == pytest.approx(max(best_job))
    results = OmegaConf.load(tmp_path / "b" / "optimization_results.yaml")
    assert results.best_value == pytest.approx(study.best_value)


def _hparams_session(run_dir: Path) -> tuple[set[str], set[str]]:
    """The hparam names and metric tags of the HParams tab in a run's TensorBoard events."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams, metrics = set(), set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        try:
            contents = accumulator.PluginTagToContent("hparams").values()
        except KeyError:  # the file written after training holds the final metrics only
            contents = []
        for content in contents:
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                hparams |= set(data.session_start_info.hparams)
            if data.HasField("experiment"):
                metrics |= {m.name.tag for m in data.experiment.metric_infos}
        metrics |= {tag for tag in accumulator.Tags()["scalars"] if tag.startswith("hp/")}
    return hparams, metrics


def test_joblib_runs_jobs_in_parallel_with_their_share_of_the_cores(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    run(
        "stn.train",
        "--multirun",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        "model.optimizer.lr=0.01,0.03",
        f"hydra.sweep.dir={sweep}",
        data_dir=mnist_dir,
    )
    jobs = jobs_of(sweep)
    assert len(jobs) == 2
    threads = max(os.cpu_count() // 2, 1)
    for job in jobs:
        assert (job / "metrics.json").is_file()
        assert f"torch threads: {threads}" in (job / "train.log").read_text()
        # TensorBoard's HParams tab: the swept key is a column, the final metrics are its metrics
        hparams, metrics = _hparams_session(job)
        assert {"model.optimizer.lr", "model.localization.depth", "data.batch_size", "model"} <= hparams
        assert {"hp/val/acc_best", "hp/test/acc"} <= metrics


def test_submitit_local_runs_the_cluster_path_here(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    run(
        "stn.train",
        "--multirun",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        *TINY,
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        data_dir=mnist_dir,
    )
    jobs = jobs_of(sweep)
    assert len(jobs) == 2 and all((job / "metrics.json").is_file() for job in jobs)
    assert all("torch threads: 1" in (job / "train.log").read_text() for job in jobs)
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # submitted, run and collected by submitit


def test_slurm_launcher_config_requeues_on_preemption():
    from .conftest import compose_config

    cfg = compose_config("train.yaml", ["hydra/launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout > 0 and launcher.additional_parameters.requeue is True
    assert launcher.gpus_per_task == 1 and "partition" in launcher and launcher.timeout_min > 0


def test_ddp_sim_trains_on_two_processes(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    process = run("stn.train", "trainer=ddp_sim", "debug=fdr", f"hydra.run.dir={run_dir}", data_dir=mnist_dir)
    output = process.stdout + process.stderr
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] >= 0.0


def _dataset(count: int) -> InMemoryImages:
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2)
    return InMemoryImages(images.contiguous(), torch.arange(count), mean=0.0, std=1.0)


def _labels(batches: DeviceBatches) -> list[int]:
    return [int(label) for _, labels in batches for label in labels]


def test_ddp_ranks_split_the_fast_path_data():
    dataset, world = _dataset(103), 2
    train = [DeviceBatches(dataset, 8, EpochShuffle(103, 5), rank=r, world_size=world) for r in range(world)]
    shares = [_labels(batches) for batches in train]
    assert len(shares[0]) == len(shares[1]) == 51 and len(train[0]) == len(train[1]) == 7  # lockstep
    assert not set(shares[0]) & set(shares[1])  # disjoint
    whole = _labels(DeviceBatches(dataset, 8, EpochShuffle(103, seed=5)))
    assert sorted(shares[0] + shares[1]) == sorted(whole[: 51 * 2])  # the same epoch order, shared out
    val = [_labels(DeviceBatches(dataset, 8, rank=r, world_size=world)) for r in range(world)]
    assert val[0] + val[1] == list(range(103))  # every validation image once


def test_job_share_splits_cores_and_gpus():
    assert job_share(None, jobs=1, job_number=0, cpu_count=16, gpu_count=1) == JobShare(None)
    assert job_share(None, jobs=4, job_number=5, cpu_count=16, gpu_count=0) == JobShare(4)
    assert job_share(None, jobs=4, job_number=5, cpu_count=16, gpu_count=1) == JobShare(4, 0, 0.25)
    assert job_share(None, jobs=4, job_number=5, cpu_count=16, gpu_count=2) == JobShare(4, 1, 0.5)
    assert job_share(3, jobs=4, job_number=0, cpu_count=16, gpu_count=0).threads == 3  # num_threads wins
    assert job_share(None, 1, 0, 16, 0, cpus_per_task=8).threads == 8  # a cluster task's CPUs
    assert concurrent_jobs(OmegaConf.create({"n_jobs": -1}), cpu_count=16) == 16
    assert concurrent_jobs(OmegaConf.create({"timeout_min": 60}), cpu_count=16) == 1


def test_summary_ranks_jobs_and_lists_the_failed_one(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    process = run(
        "stn.train",
        "--multirun",
        *TINY,
        "model.localization.depth=1,2,9",  # 9 does not fit a 28x28 input: that job fails
        f"hydra.sweep.dir={sweep}",
        data_dir=mnist_dir,
        check=False,
    )
    assert process.returncode != 0  # the sweep reports its failed job
    assert summarize([str(sweep)]) == 0
    lines = (sweep / "summary.md").read_text().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:4] == ["job", "status", "model.localization.depth", "val/acc_best"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[1] for row in rows] == ["ok", "ok", "failed"]
    scores = [float(row[3]) for row in rows[:2]]
    assert scores == sorted(scores, reverse=True)  # best first
    assert rows[2][2] == "9" and "model.localization.depth=9 is out of range" in rows[2][-1]
    assert (sweep / "summary.csv").read_text().count("\n") == 4
    assert (sweep / "summary.png").stat().st_size > 0


def test_summary_of_a_folder_without_runs_is_one_sentence(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as stop:
        summarize([str(tmp_path)])
    assert str(stop.value) == f"error: no runs under {tmp_path}: no job folder with .hydra/overrides.yaml"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["--multirun", "model.localization.dept=1,2"],
            "error: the sweep sets model.localization.dept, which is not a key of this config; "
            "did you mean model.localization.depth",
        ),
        (
            ["hparams_search=optuna", "model.optimizer.lr=interval(0.1, 0.01)"],  # Optuna's search space
            "error: the search space of model.optimizer.lr, interval(0.1, 0.01), is empty",
        ),
        (["--multirun", "seed=range(3,1)"], "error: the search space of seed, range(3, 1, 1), is empty"),
    ],
)
def test_bad_sweep_stops_before_any_job(overrides: list[str], message: str, tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    process = run("stn.train", *overrides, f"hydra.sweep.dir={sweep}", data_dir=mnist_dir, check=False)
    assert_one_sentence_error(process, message)
    assert not sweep.exists() or not jobs_of(sweep)


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


def test_a_run_killed_mid_epoch_resumes_and_loses_nothing(tmp_path: Path, mnist_dir: Path):
    outputs = tmp_path / "outputs"
    command = [
        sys.executable,
        "-m",
        "stn.train",
        *SMALL,
        "data.train_subset=16384",
        "data.batch_size=32",  # 512 steps an epoch: long enough to be killed inside one
        "trainer.max_epochs=3",
        f"paths.log_dir={outputs}",
    ]
    env = {**os.environ, "STN_DATA_DIR": str(mnist_dir), "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(outputs.glob("*/*/checkpoints/last.ckpt")):  # the first epoch has ended
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.2)
    time.sleep(0.5)  # into the second epoch
    first.send_signal(signal.SIGKILL)
    first.wait()
    (run_dir,) = [p.parents[1] for p in outputs.glob("*/*/checkpoints/last.ckpt")]
    before = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    killed_at = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert killed_at["epoch"] < 2 and not (run_dir / "metrics.json").exists()

    time.sleep(1.1)  # a new run folder (Hydra names them by the second)
    resumed = subprocess.run([*command, "ckpt_path=last"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"the run goes on in {run_dir}" in resumed.stderr + resumed.stdout
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
