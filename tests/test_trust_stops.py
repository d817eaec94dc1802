"""Trust, stopping and checking: a run stopped by a signal never reports success in any phase
(SIGTERM while testing, Ctrl-C while training: the sentence and 128 + the signal's number), a run
that would train no batch is refused, and every value the user gives is checked before anything
starts. In process, on small real MNIST."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from stn.errors import ConfigError, RunInterrupted
from stn.training import train

from .conftest import FINISHED, check_and_build, compose_config, small_run, write_hydra_record


class SignalOnce(L.Callback):
    """Sends this process `signal_number` after the first batch of the `stage` (train or test)."""

    def __init__(self, signal_number: int, stage: str) -> None:
        self.signal_number, self.stage, self.sent = signal_number, stage, False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signal_number)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stage == "train":
            self._send()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "test":
            self._send()


def _train_with_a_signal(run_dir: Path, mnist_dir: Path, signal_number: int, stage: str) -> None:
    cfg = small_run(compose_config("train.yaml", list(FINISHED)), run_dir, mnist_dir)
    with open_dict(cfg):
        cfg.callbacks.signal_once = {
            "_target_": f"{__name__}.SignalOnce",
            "signal_number": int(signal_number),
            "stage": stage,
        }
    write_hydra_record(cfg, run_dir)
    previous = signal.getsignal(signal.SIGINT)
    try:
        train(cfg)
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores a second Ctrl-C while it shuts down
        GlobalHydra.instance().clear()


def test_sigterm_while_testing_is_a_stopped_run_not_a_success(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    with pytest.raises(
        RunInterrupted, match=r"stopped \(SIGTERM\) while it tested its best checkpoint"
    ) as stopped:
        _train_with_a_signal(run_dir, mnist_dir, signal.SIGTERM, "test")
    assert stopped.value.exit_code == 143
    assert "ckpt_path=last" in str(stopped.value)
    assert not (run_dir / "metrics.json").exists()


def test_ctrl_c_while_training_says_incomplete_with_the_shells_130(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted, match=r"stopped \(SIGINT\) in epoch 0 and is incomplete") as stopped:
        _train_with_a_signal(run_dir, mnist_dir, signal.SIGINT, "train")
    assert stopped.value.exit_code == 130
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.limit_train_batches=0"],
            r"trainer.limit_train_batches=0 is out of range: .*0 trains no batch",
        ),
        (["trainer.limit_train_batches=0.0"], "trainer.limit_train_batches=0.0 is out of range"),
        (["+trainer.max_steps=0"], "trainer.max_steps=0 is out of range"),
        (
            ["trainer.gradient_clip_val=-1"],
            r"trainer.gradient_clip_val=-1 is out of range: allowed >= 0 or null",
        ),
        (
            ["data.test_subset=20000"],
            r"data.test_subset=20000 is out of range: allowed integers 1..10000 or null",
        ),
        (["data.train_subset=60000"], r"data.train_subset=60000 is out of range: allowed integers 1..55000"),
        (["~model.localization"], "model.localization is missing, but model.transformer is set"),
    ],
)
def test_values_that_would_train_nothing_or_cannot_be_are_refused(overrides: list[str], message: str):
    from stn.utils.checks import check_config

    cfg = compose_config("train.yaml", ["trainer.accelerator=cpu", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
        check_and_build(cfg)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_dataloader_workers_is_the_sentence(
    tmp_path: Path, mnist_dir: Path
):
    """What SLURM and most schedulers send: SIGTERM to every process of the group, the DataLoader
    workers included. The workers must not die first and turn it into their traceback."""
    import subprocess
    import time

    from .conftest import ROOT, TINY, cli_command, cli_env

    run_dir = tmp_path / "run"
    command = cli_command(
        "stn.train", *TINY, "data.fast_path=false", "data.num_workers=2", "data.train_subset=2048",
        "data.batch_size=32", "trainer.max_epochs=50", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=cli_env(mnist_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a scheduler's job
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():  # epoch 0 done: training, workers up
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    stderr = process.stderr.read().decode()
    assert "the run was stopped (SIGTERM)" in stderr and "is incomplete" in stderr
    assert "killed by signal" not in stderr and "Traceback" not in stderr
    # the run folder's log ends with the same sentence: the folder says why the run ended
    assert "error: the run was stopped (SIGTERM)" in (run_dir / "train.log").read_text().splitlines()[-1]


@pytest.mark.parametrize(
    ("n_trials", "direction", "storage", "message"),
    [
        (0, "maximize", None, "hydra.sweeper.n_trials=0 is out of range: allowed integers >= 1"),
        (-3, "maximize", None, "hydra.sweeper.n_trials=-3 is out of range"),
        (
            5,
            "sideways",
            None,
            "hydra.sweeper.direction=sideways is out of range: allowed minimize | maximize",
        ),
        (5, "maximize", "mysql://db/x", "is out of range: allowed sqlite:///<file> | journal:<file>"),
        (5, "maximize", "postgresql://stn:secret@localhost/stn", "carries a password"),
        (5, "maximize", "postgresql://localhost", "names no host or no database"),
        (5, "maximize", "journal:NOT_SQLITE", "is not an Optuna journal"),
        (5, "maximize", "sqlite:///FOREIGN", "is another program's SQLite database \\(tables notes\\)"),
        (5, "maximize", "journal:MISSING/study.log", "does not exist"),
        (5, "maximize", "sqlite:///NOT_SQLITE", "is not a SQLite database"),
        (5, "maximize", "sqlite:///MISSING/study.db", "does not exist"),
    ],
)
def test_an_optuna_study_that_cannot_run_is_refused_before_its_first_trial(
    n_trials, direction: str, storage: str | None, message: str, tmp_path: Path
):
    from stn.sweeps.optuna_search import check_sweeper

    (tmp_path / "text.db").write_text("not a database")
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(tmp_path / "foreign.db")) as foreign:
        foreign.execute("CREATE TABLE notes (text)")
    if storage:
        storage = storage.replace("FOREIGN", str(tmp_path / "foreign.db"))
        storage = storage.replace("NOT_SQLITE", str(tmp_path / "text.db")).replace(
            "MISSING", str(tmp_path / "no")
        )

    def sweeper(n_trials=5, direction="maximize", storage=None, study_name="s", **rest):
        return OmegaConf.create(
            {"n_trials": n_trials, "n_jobs": 1, "max_failure_rate": 1.0, "direction": direction,
             "storage": storage, "study_name": study_name, **rest}
        )  # fmt: skip

    with pytest.raises(ConfigError, match=message):
        check_sweeper(sweeper(n_trials, direction, storage))
    for new in (
        f"sqlite:///{tmp_path / 'new.db'}",
        f"journal:{tmp_path / 'new.log'}",
        "postgresql://stn@db:5432/stn",
    ):
        assert check_sweeper(sweeper(storage=new)) == ["maximize"]  # a new file in a folder that exists
    with pytest.raises(ConfigError, match="hydra.sweeper.max_failure_rate=half is out of range"):
        check_sweeper(sweeper(max_failure_rate="half"))
    with pytest.raises(ConfigError, match="study_name is null with a storage"):
        check_sweeper(sweeper(storage=f"journal:{tmp_path / 'new.log'}", study_name=None))


def test_the_summary_neutralises_formulas_html_and_row_breaks(finished_run: Path, tmp_path: Path):
    import csv
    import json
    import shutil

    from stn.summarize import main as summarize

    sweep = tmp_path / "sweep"
    values = ['=HYPERLINK("http://x")', "<img src=x onerror=alert(1)>", "a|b\nc", "-0.5"]
    for job, value in enumerate(values):
        shutil.copytree(finished_run, sweep / str(job))
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(json.dumps([f"tags={value}"]))
    strings = json.loads((sweep / "3" / "metrics.json").read_text())
    (sweep / "3" / "metrics.json").write_text(json.dumps({k: "high" for k in strings}))
    deep = sweep / "2" / "metrics.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert summarize([str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    tags = {row["job"]: row["tags"] for row in rows}
    assert tags["0"] == '\'=HYPERLINK("http://x")'  # shown as text, not evaluated
    assert tags["3"] == "-0.5"  # a number stays a number
    table = (sweep / "summary.md").read_text()
    assert "<img" not in table and "&lt;img" in table
    job_rows = [line for line in table.splitlines() if line.startswith(("| 0 ", "| 1 ", "| 2 ", "| 3 "))]
    assert len(job_rows) == 4 and len(table.splitlines()) == 3 + 1 + 4  # no newline splits a row
    assert "a\\|b c" in table
    errors = {row["job"]: row["error"] for row in rows}
    assert "nests deeper than any metrics file" in errors["2"]
    assert "metrics that are not numbers: " in errors["3"] and "test/acc='high'" in errors["3"]


def test_sigterm_while_stn_eval_tests_is_the_sentence_not_a_success(tmp_path: Path, mnist_dir: Path):
    from stn.inference.evaluate import eval_task

    cfg = compose_config(
        "eval.yaml", ["model_name=stn_mnist", "data.test_subset=512", f"data.data_dir={mnist_dir}"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.callbacks = [{"_target_": f"{__name__}.SignalOnce", "signal_number": 15, "stage": "test"}]
    try:
        with pytest.raises(
            RunInterrupted, match=r"the test of zoo model stn_mnist was stopped \(SIGTERM\)"
        ) as stopped:
            eval_task(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert stopped.value.exit_code == 143
    assert not (tmp_path / "eval" / "metrics.json").exists()
