"""Searches that stop bad trials early: a trial reports its validation metric to its stored Optuna
study after every epoch and stops when the pruner says so (kept, untested, exit 0); the sweeper
keeps `n_jobs` trials in flight with no batch barrier; the storage strings and pruner configs that
cannot work are one sentence each. Small subsets of real MNIST."""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import uuid
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf, open_dict

from stn.errors import ConfigError
from stn.sweeps.pruning import PrunedTrial, build_pruner
from stn.sweeps.storage import absolute, open_storage
from stn.sweeps.study_plots import idle_slot_seconds
from stn.training import train, train_task

from .conftest import TINY, compose_config, jobs_of, multirun, run, small_run


def _trial_run(tmp_path: Path, mnist_dir: Path, pruner: dict, epochs: int = 3):
    """A run composed as the sweeper's job for trial 0 of a study kept in a journal file."""
    storage = f"journal:{tmp_path / 'journal.log'}"
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize")
    trial = study.ask()
    cfg = compose_config("train.yaml", ["hparams_search=optuna", "callbacks.progress_bar.refresh_rate=0"])
    with open_dict(cfg):
        cfg.hydra.sweeper.storage = storage
        cfg.hydra.sweeper.study_name = "s"
        cfg.hydra.sweeper.pruner = pruner
        cfg.optuna_trial = trial.number
    cfg = small_run(cfg, tmp_path / "run", mnist_dir)
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
        cfg.trainer.limit_val_batches = 1
    return cfg, storage


def test_a_trial_below_the_threshold_stops_after_its_first_epoch_and_is_kept(
    tmp_path: Path, mnist_dir: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="stn")
    threshold = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.999}  # no model gets there
    cfg, storage = _trial_run(tmp_path, mnist_dir, threshold)
    result = train_task(cfg)

    assert isinstance(result, PrunedTrial) and result.epoch == 0 and result.metric == "val/acc_best"
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pruned"] == {"epoch": 0, "val/acc_best": pytest.approx(result.value)}
    assert "test/acc" not in metrics  # a pruned run is not tested
    assert (run / "checkpoints" / "last.ckpt").is_file()  # its epoch is kept
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert {int(float(r["epoch"])) for r in rows if r.get("val/acc")} == {0}  # one epoch, not three
    study = optuna.load_study(study_name="s", storage=open_storage(storage))
    assert study.trials[0].intermediate_values == {0: pytest.approx(result.value)}  # reported to the study
    log = caplog.text  # train.log's lines (Hydra's file handler writes them there)
    assert f"Pruned by the study 's' after epoch 0: val/acc_best {result.value:.4f}" in log


def test_a_trial_the_pruner_keeps_trains_to_the_end_and_reports_every_epoch(tmp_path: Path, mnist_dir: Path):
    cfg, storage = _trial_run(
        tmp_path, mnist_dir, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.0}
    )
    metrics = train(cfg)
    assert "pruned" not in metrics and "test/acc" in metrics
    study = optuna.load_study(study_name="s", storage=open_storage(storage))
    assert sorted(study.trials[0].intermediate_values) == [0, 1, 2]


def test_a_run_outside_a_stored_study_has_no_pruning(tmp_path: Path, mnist_dir: Path):
    cfg = small_run(
        compose_config("train.yaml", ["callbacks.progress_bar.refresh_rate=0"]), tmp_path, mnist_dir
    )
    assert cfg.optuna_trial is None
    assert isinstance(train_task(cfg), float)


@pytest.mark.parametrize(
    ("pruner", "message"),
    [
        (
            {"_target_": "optuna.samplers.TPESampler"},
            "hydra.sweeper.pruner._target_=optuna.samplers.TPESampler is not",
        ),
        (
            {"_target_": "optuna.pruners.NoSuchPruner"},
            "is not an Optuna pruner; allowed e.g. optuna.pruners.Median",
        ),
        (
            {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": "two"},
            r"\(MedianPruner\) refused its arguments",
        ),
        ({"_target_": "optuna.pruners.ThresholdPruner"}, r"\(ThresholdPruner\) refused its arguments"),
        ("median", "hydra.sweeper.pruner=median is out of range: allowed null or"),
    ],
)
def test_a_pruner_that_cannot_be_built_is_one_sentence(pruner, message: str):
    with pytest.raises(ConfigError, match=message):
        build_pruner(OmegaConf.create(pruner) if isinstance(pruner, dict) else pruner)


def test_any_optuna_pruner_builds_from_its_target():
    assert build_pruner(None) is None
    hyperband = {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": 8}
    assert isinstance(build_pruner(OmegaConf.create(hyperband)), optuna.pruners.HyperbandPruner)
    median = {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 2}
    assert isinstance(build_pruner(OmegaConf.create(median)), optuna.pruners.MedianPruner)


def test_the_storage_strings_open_optunas_storages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("journal:study.log") == f"journal:{tmp_path / 'study.log'}"
    assert absolute("sqlite:///study.db") == f"sqlite:///{tmp_path / 'study.db'}"
    assert absolute("postgresql://stn@localhost/stn") == "postgresql://stn@localhost/stn"
    assert open_storage(None) is None
    journal = open_storage("journal:study.log")
    assert isinstance(journal, optuna.storages.JournalStorage)
    optuna.create_study(study_name="j", storage=journal).optimize(lambda t: t.suggest_float("x", 0, 1), 2)
    again = optuna.load_study(study_name="j", storage=open_storage("journal:study.log"))
    assert len(again.trials) == 2  # one file holds the study
    assert isinstance(open_storage("sqlite:///study.db"), optuna.storages.RDBStorage)


def test_idle_slot_time_counts_empty_slots_only_while_trials_remain():
    # two slots; a barrier: the third trial waits for the slower of the first two (5 s idle)
    assert idle_slot_seconds([(0, 10), (0, 5), (10, 12)], slots=2) == 5
    # no barrier: the third starts when the first slot frees
    assert idle_slot_seconds([(0, 10), (0, 5), (5, 12)], slots=2) == 0
    # the tail after the last start does not count: no trial was left to launch
    assert idle_slot_seconds([(0, 10), (0, 1)], slots=2) == 0


def _sweep_trials(sweep: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((sweep / "trials.csv").open()))


@pytest.mark.slow
def test_a_joblib_sweep_where_every_trial_is_pruned_after_its_first_epoch(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    process, jobs = multirun(
        "hparams_search=optuna", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.999}", *TINY,
        "trainer.max_epochs=3", sweep=sweep, data_dir=mnist_dir, check=False,
    )  # fmt: skip
    assert "every trial of the study 'stn' was pruned or failed (4 pruned)" in process.stderr
    assert "Traceback" not in process.stderr
    assert len(jobs) == 4 and [job.name.split("_")[0] for job in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["pruned"]["epoch"] == 0 and "test/acc" not in metrics
        rows = list(csv.DictReader((job / "csv" / "metrics.csv").open()))
        assert {int(float(r["epoch"])) for r in rows if r.get("val/acc")} == {0}
    study = optuna.load_study(
        study_name="stn", storage=open_storage(f"journal:{sweep / 'optuna_journal.log'}")
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 4
    assert [row["state"] for row in _sweep_trials(sweep)] == ["PRUNED"] * 4
    # the summary lists them as pruned, never as failed, and draws the timeline and the curves
    from stn.summarize import main as summarize

    assert summarize([str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["status"] for row in rows] == ["pruned"] * 4
    values = [float(row["val/acc_best"]) for row in rows]
    assert values == sorted(values, reverse=True)  # ranked by the value they were stopped at
    assert {"timeline.png", "curves.png"} <= {path.name for path in sweep.iterdir()}
    assert "4 pruned, 0 failed" in (sweep / "summary.html").read_text()


@pytest.mark.slow
def test_an_asynchronous_sweep_starts_the_next_trial_before_the_longest_ends(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    multirun(
        "hparams_search=optuna", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=0", *TINY, "trainer.max_epochs=choice(1, 5)",
        sweep=sweep, data_dir=mnist_dir,
    )  # fmt: skip
    trials = _sweep_trials(sweep)
    assert [row["state"] for row in trials] == ["COMPLETE"] * 3
    epochs = [json.loads(row["params"])["trainer.max_epochs"] for row in trials]
    assert sorted(epochs[:2]) == [1, 5]  # the first two trials differ in length
    start, end = ([datetime.fromisoformat(row[key]) for row in trials] for key in ("start", "end"))
    longest = max(range(2), key=lambda i: end[i] - start[i])
    assert start[2] < end[longest]  # the third did not wait for the longest of the first two
    assert len(jobs_of(sweep)) == 3


DB_PORT = os.environ.get("STN_DB_PORT", "55432")
DB_URL = f"postgresql://stn@127.0.0.1:{DB_PORT}/stn"


@functools.cache
def _db_answers() -> str:
    """'' when this clone's PostgreSQL server (make db-up) answers, else why not (asked only when a
    test marked db is selected)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (the sweeps extra)"
    try:
        psycopg.connect(f"host=127.0.0.1 port={DB_PORT} dbname=stn user=stn", connect_timeout=5).close()
    except psycopg.Error as error:
        return f"no PostgreSQL server answers at {DB_URL} ({str(error).strip()[:120]}); make db-up"
    return ""


@pytest.fixture
def database() -> str:
    why = _db_answers()
    if why:
        pytest.skip(why)
    return DB_URL


@pytest.mark.db
@pytest.mark.slow
def test_a_two_job_pruned_sweep_on_postgresql(tmp_path: Path, mnist_dir: Path, database: str):
    study_name = f"test-{uuid.uuid4().hex[:8]}"
    sweep = tmp_path / "sweep"
    multirun(
        "hparams_search=optuna", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={database}",
        f"hydra.sweeper.study_name={study_name}",
        "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1}", *TINY,
        "trainer.max_epochs=2", sweep=sweep, data_dir=mnist_dir,
    )  # fmt: skip
    study = optuna.load_study(study_name=study_name, storage=open_storage(database))
    assert len(study.trials) == 2
    assert {t.state for t in study.trials} <= {
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    }
    assert all(t.intermediate_values for t in study.trials)  # each job reported to the server itself
    assert [row["state"] for row in _sweep_trials(sweep)] == [t.state.name for t in study.trials]
    record = (sweep / "study.yaml").read_text()
    assert database in record and "password" not in record.lower()


@pytest.mark.db
@pytest.mark.slow
def test_a_wrong_database_password_is_one_sentence_and_never_shown(
    tmp_path: Path, mnist_dir: Path, database: str
):
    empty = tmp_path / "pgpass"
    empty.write_text("")
    empty.chmod(0o600)
    process = run(
        "stn.train", "hparams_search=optuna", f"hydra.sweeper.storage={database}", *TINY,
        f"hydra.sweep.dir={tmp_path / 'sweep'}", data_dir=mnist_dir, check=False,
        env={"PGPASSFILE": str(empty), "PGPASSWORD": "not-the-password"},
    )  # fmt: skip
    assert process.returncode == 1
    assert (
        "the Optuna storage hydra.sweeper.storage=" in process.stderr and "cannot be opened" in process.stderr
    )
    assert "password authentication failed" in process.stderr
    assert "not-the-password" not in process.stderr + process.stdout and "Traceback" not in process.stderr


@pytest.mark.slow
def test_a_storage_that_cannot_be_reached_stops_the_sweep_before_any_job(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    process = run(
        "stn.train", "hparams_search=optuna", "hydra.sweeper.storage=postgresql://stn@127.0.0.1:9/stn", *TINY,
        f"hydra.sweep.dir={sweep}", data_dir=mnist_dir, check=False,
    )  # fmt: skip
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert "hydra.sweeper.storage=postgresql://stn@127.0.0.1:9/stn cannot be opened" in process.stderr
    assert not sweep.exists() or not jobs_of(sweep)
    refused = run(
        "stn.train", "hparams_search=optuna", "hydra.sweeper.storage=postgresql://stn:pw@127.0.0.1/stn",
        *TINY,
        f"hydra.sweep.dir={sweep}", data_dir=mnist_dir, check=False,
    )  # fmt: skip
    assert "carries a password" in refused.stderr and "pw@" not in refused.stderr


@pytest.mark.slow
def test_a_pruned_study_over_a_length_each_data_choice_sets_warns_once_of_a_one_epoch_trial(
    tmp_path: Path, mnist_dir: Path
):
    # experiment=paper sets trainer.max_epochs from the data choice (hydra:runtime.choices)
    small = [override for override in TINY if not override.startswith("trainer.max_epochs=")]
    process, jobs = multirun(
        "hparams_search=optuna", "experiment=paper", "paper_epochs.mnist=1", "hydra.sweeper.n_trials=1",
        "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner}", *small,
        sweep=tmp_path / "sweep", data_dir=mnist_dir,
    )  # fmt: skip
    assert "Traceback" not in process.stderr and len(jobs) == 1
    assert (process.stdout + process.stderr).count("each trial trains one epoch (trainer.max_epochs=1)") == 1
