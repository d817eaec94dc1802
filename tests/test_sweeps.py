"""Sweeps as a researcher runs them: Optuna (a resumable study), the joblib, submitit and SLURM
launchers with each job's share of the machine, and the checks that stop a bad sweep before any
job starts. Small subsets of real MNIST, one epoch or less."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stn.sweeps.job_share import JobShare, concurrent_jobs, job_share
from stn.utils.processes import descendants

from .conftest import (
    ROOT,
    TINY,
    cli_command,
    cli_env,
    compose_config,
    jobs_of,
    multirun,
    run,
    run_rejected,
)


@pytest.mark.slow
def test_optuna_sweep_maximises_the_metric_and_resumes_its_study(tmp_path: Path, mnist_dir: Path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [
        "hparams_search=optuna",
        *TINY,
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=test",
        "hydra.sweeper.sampler.n_startup_trials=2",
    ]
    for sweep, trials in (("a", 2), ("b", 2)):
        run(
            "stn.train",
            *common,
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweep.dir={tmp_path / sweep}",
            data_dir=mnist_dir,
        )

    study = optuna.load_study(study_name="test", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4  # 2, then 2 more
    # the resumed study drew new points, not the first run's again
    first, resumed = study.trials[:2], study.trials[2:]
    assert {t.params["model.optimizer.lr"] for t in first}.isdisjoint(
        t.params["model.optimizer.lr"] for t in resumed
    )
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


@pytest.mark.slow
def test_a_stored_study_asked_for_what_it_cannot_honour_is_one_sentence(tmp_path: Path, mnist_dir: Path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["hparams_search=optuna", *TINY, f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=1"]
    run("stn.train", *common, f"hydra.sweep.dir={tmp_path / 'a'}", data_dir=mnist_dir)
    for change, message in (
        (
            ["hydra.sweeper.direction=minimize"],
            "the stored study 'stn' maximizes, but hydra.sweeper.direction=",
        ),
        (["model.optimizer.lr=choice(0.01, 0.1)"], "the stored study 'stn' searched model.optimizer.lr over"),
    ):
        process = run("stn.train", *common, *change, f"hydra.sweep.dir={tmp_path / 'b'}", data_dir=mnist_dir,
                      check=False)  # fmt: skip
        assert process.returncode == 1 and "Traceback" not in process.stderr
        assert message in process.stderr
    study = optuna.load_study(study_name="stn", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]  # nothing left RUNNING


@pytest.mark.slow
def test_an_optuna_study_whose_every_trial_fails_says_so(tmp_path: Path, mnist_dir: Path):
    process = run(
        "stn.train", "hparams_search=optuna", *TINY, "trainer.max_epochs=-1", "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", data_dir=mnist_dir, check=False,
    )  # fmt: skip
    assert process.returncode == 1
    assert "every trial of the study 'stn' failed, so it has no best point" in process.stderr
    assert "No trials are completed yet" not in process.stderr and "Traceback" not in process.stderr


def test_two_sweeps_creating_one_study_at_once_both_get_it(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    from stn.sweeps.optuna_search import create_study

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: create_study(storage, "s", ["maximize"]), range(4)))
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("a=choice(1, 2, 3)", optuna.distributions.CategoricalDistribution([1, 2, 3])),
        ("a=1,2", optuna.distributions.CategoricalDistribution([1, 2])),
        ("a=range(1, 7, 2)", optuna.distributions.IntDistribution(1, 5, step=2)),  # 7 excluded, as Hydra's
        ("a=interval(1, 8)", optuna.distributions.FloatDistribution(1.0, 8.0)),  # real, as Hydra's
        ("a=interval(0.1, 0.5)", optuna.distributions.FloatDistribution(0.1, 0.5)),
        ("a=tag(log, interval(0.001, 0.1))", optuna.distributions.FloatDistribution(0.001, 0.1, log=True)),
    ],
)
def test_the_optuna_search_space_reads_hydras_grammar(override: str, expected):
    from stn.sweeps.optuna_search import search_space

    searched, fixed = search_space([override, "b=3"])
    assert searched == {"a": expected} and fixed == {"b": "3"}
    # the command line wins over the config's params
    assert search_space([override, "a=0.5"]) == ({}, {"a": "0.5"})


def test_a_sweep_without_the_sweeps_extra_names_it(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    from stn.errors import ConfigError
    from stn.sweeps.checks import check_sweep_packages

    cfg = compose_config(overrides=["hparams_search=optuna"])
    check_sweep_packages(cfg)  # installed here
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else found(name, *a)
    )
    with pytest.raises(ConfigError, match=r"hydra.sweeper is StnOptunaSweeper, which needs the sweeps extra"):
        check_sweep_packages(cfg)


def _hparams_session(run_dir: Path) -> tuple[dict[str, object], set[str]]:
    """The hparams (name: value) and metric tags of the HParams tab in a run's TensorBoard events."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    hparams, metrics = {}, set()
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
                for name, value in data.session_start_info.hparams.items():
                    hparams[name] = value.string_value or value.number_value
            if data.HasField("experiment"):
                metrics |= {m.name.tag for m in data.experiment.metric_infos}
        metrics |= {tag for tag in accumulator.Tags()["scalars"] if tag.startswith("hp/")}
    return hparams, metrics


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_with_their_share_of_the_cores(tmp_path: Path, mnist_dir: Path):
    _, jobs = multirun(
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "model.optimizer.lr=0.01,0.03",
        sweep=tmp_path / "sweep", data_dir=mnist_dir,
    )  # fmt: skip
    assert len(jobs) == 2
    threads = max(os.cpu_count() // 2, 1)
    for job in jobs:
        assert (job / "metrics.json").is_file()
        assert f"torch threads: {threads}" in (job / "train.log").read_text()
        # TensorBoard's HParams tab: the swept key is a column, the final metrics are its metrics
        hparams, metrics = _hparams_session(job)
        assert {"model.optimizer.lr", "model.localization.depth", "data.batch_size", "model"} <= set(hparams)
        assert hparams["run"] == job.name  # trials told apart: the job folder's name, not the sweep's path
        assert {"hp/val/acc_best", "hp/test/acc"} <= metrics


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup_terminal_closed"])
def test_sigterm_stops_a_joblib_sweep_and_its_workers(tmp_path: Path, mnist_dir: Path, stop: signal.Signals):
    sweep = tmp_path / "sweep"
    command = cli_command(
        "stn.train", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
        "data.train_subset=16384", "data.batch_size=32", "trainer.max_epochs=3", "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    parent = subprocess.Popen(
        command, cwd=ROOT, env=cli_env(mnist_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while len(list(sweep.glob("*/checkpoints"))) < 2:  # both jobs are training
        assert parent.poll() is None and time.monotonic() < deadline, "the sweep ended before the signal"
        time.sleep(0.2)
    workers = descendants(parent.pid)
    assert workers
    parent.send_signal(stop)
    assert parent.wait(timeout=30) == 128 + stop
    assert f"the sweep was stopped ({stop.name})" in parent.stderr.read().decode()
    time.sleep(1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert alive == []
    assert not list(sweep.glob("*/metrics.json"))  # no job went on to finish


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.mark.slow
def test_submitit_local_runs_the_cluster_path_here(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    _, jobs = multirun(
        "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", *TINY, "seed=0,1",
        sweep=sweep, data_dir=mnist_dir,
    )  # fmt: skip
    assert len(jobs) == 2 and all((job / "metrics.json").is_file() for job in jobs)
    assert all("torch threads: 1" in (job / "train.log").read_text() for job in jobs)
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # submitted, run and collected by submitit


def test_slurm_launcher_config_requeues_on_preemption():

    cfg = compose_config("train.yaml", ["hydra/launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout > 0 and launcher.additional_parameters.requeue is True
    assert launcher.gpus_per_task is None and "partition" in launcher and launcher.timeout_min > 0
    assert launcher.cpus_per_task == 1  # num_threads unset: one CPU, one torch thread
    # a GPU per task only when the trainer trains on GPUs; the job's CPUs are its torch threads
    on_gpus = compose_config(
        "train.yaml", ["hydra/launcher=slurm", "trainer=gpu", "num_threads=6"]
    ).hydra.launcher
    assert on_gpus.gpus_per_task == 1 and on_gpus.cpus_per_task == 6


def test_job_share_splits_cores_and_gpus():
    assert job_share(None, jobs=1, job_number=0, cpu_count=16, gpu_count=1) == JobShare(None)
    assert job_share(None, jobs=4, job_number=5, cpu_count=16, gpu_count=0) == JobShare(4)
    assert job_share(None, jobs=4, job_number=5, cpu_count=16, gpu_count=1) == JobShare(4, 0, 0.25)
    assert job_share(None, jobs=4, job_number=5, cpu_count=16, gpu_count=2) == JobShare(4, 1, 0.5)
    assert job_share(3, jobs=4, job_number=0, cpu_count=16, gpu_count=0).threads == 3  # num_threads wins
    assert job_share(None, 1, 0, 16, 0, cpus_per_task=8).threads == 8  # a cluster task's CPUs
    assert concurrent_jobs(OmegaConf.create({"n_jobs": -1}), cpu_count=16) == 16
    assert concurrent_jobs(OmegaConf.create({"timeout_min": 60}), cpu_count=16) == 1


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
        (
            ["hparams_search=optuna", "model.localization.depth=interval(1, 3)"],
            "error: the sweep searches model.localization.depth, an integer key, over an interval of reals",
        ),
    ],
)
@pytest.mark.slow
def test_bad_sweep_stops_before_any_job(overrides: list[str], message: str, tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    run_rejected("stn.train", *overrides, f"hydra.sweep.dir={sweep}", data_dir=mnist_dir, message=message)
    assert not sweep.exists() or not jobs_of(sweep)


@pytest.mark.slow
def test_a_joblib_sweep_prints_no_schema_warning(tmp_path: Path, mnist_dir: Path):
    process, jobs = multirun(
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "trainer.max_epochs=1", "seed=0,1",
        "data.train_subset=256", sweep=tmp_path / "sweep", data_dir=mnist_dir,
    )  # fmt: skip
    assert len(jobs) == 2
    assert "ConfigStore schema" not in process.stderr + process.stdout


def test_submitits_sacct_warning_shows_once_a_sweep(caplog: pytest.LogCaptureFixture):
    """A cluster without accounting (make slurm-up's) makes submitit warn at every poll."""
    import logging

    from stn.environment import quiet_known_noise

    quiet_known_noise()
    with caplog.at_level(logging.WARNING, logger="submitit"):
        for call in range(1, 16):
            logging.getLogger("submitit").warning(
                f"Call #{call} - Bypassing sacct error ..., status may be inaccurate."
            )
        logging.getLogger("submitit").warning("Bypassing state error: something else")
    said = [record.getMessage() for record in caplog.records]
    assert len([line for line in said if "Bypassing sacct error" in line]) == 1
    assert "Bypassing state error: something else" in said
