"""Sweeps on a real SLURM cluster (`make slurm-up`: one node, partition `debug`): a sweep that waits
for its jobs and records a failing one, a job requeued mid-epoch and one past its time limit that
both go on from their last checkpoint in their own folder, DDP across two SLURM tasks in one run
folder, and the faults that must be one sentence. Marked `slurm` (and slow); skipped with the
reason where `sinfo` does not answer. CI starts the cluster first (.ci/run)."""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stn.paths import ROOT

from .conftest import TINY, assert_one_sentence_error, cli_command, cli_env, jobs_of, multirun, run

OWN_CONFIG = ROOT / ".slurm" / "slurm.conf"  # written by tools/slurm.sh up


@functools.cache
def _cluster_answers() -> str:
    """'' when a SLURM cluster with partition debug answers here, else why not (asked once, and only
    when a test of this module is selected: collection asks nothing of the machine). This clone's own
    cluster (`make slurm-up`) is the one asked, and the one the sweeps submit to, where the machine's
    /etc/slurm/slurm.conf is another cluster's."""
    if "SLURM_CONF" not in os.environ and OWN_CONFIG.is_file():
        os.environ["SLURM_CONF"] = str(OWN_CONFIG)
    if shutil.which("sinfo") is None:
        return "SLURM is not installed (make slurm-up installs and starts a one-machine cluster)"
    try:
        answer = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%T"], capture_output=True, text=True,
                                timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if answer.returncode != 0 or not answer.stdout.strip():
        why = answer.stderr.strip() or "sinfo printed nothing"
        return f"no SLURM partition debug answers ({why}); make slurm-up"
    return ""


pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _needs_the_cluster() -> None:
    why = _cluster_answers()
    if why:
        pytest.skip(why)


ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug"]


def _epochs_with_train_loss(job: Path) -> list[int]:
    rows = list(csv.DictReader((job / "csv" / "metrics.csv").open()))
    return [int(float(row["epoch"])) for row in rows if row.get("train/loss")]


def _job_ids() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()


def _start_requeued_jobs_now(stop: threading.Event) -> None:
    """SLURM holds a requeued job back (BeginTime) for about two minutes; a test cannot wait that
    long, so each requeued job is released as soon as it is pending again."""
    while not stop.is_set():
        listing = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            job, state, reason = (line.split() + ["", "", ""])[:3]
            if state == "PENDING" and reason == "BeginTime":
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
        stop.wait(0.5)


def test_a_slurm_sweep_waits_for_its_jobs_and_records_a_failing_one(tmp_path: Path, mnist_dir: Path):
    from stn.summarize import load_jobs
    from stn.summarize import main as summarize

    sweep = tmp_path / "sweep"
    process, jobs = multirun(
        *ON_SLURM, *TINY, "model.optimizer.lr=0.01,1e6", sweep=sweep, data_dir=mnist_dir, check=False
    )
    assert len(jobs) == 2 and (jobs[0] / "metrics.json").is_file()  # returned once both were done
    assert not (jobs[1] / "metrics.json").exists()
    assert [job.status for job in load_jobs(sweep)] == ["ok", "diverged"]
    assert "training diverged" in load_jobs(sweep)[1].error
    log = (jobs[0] / "train.log").read_text()
    assert "torch threads: 1" in log  # cpus_per_task follows num_threads
    assert "epoch 0: val/acc " in log  # one line per epoch in the job's log
    assert summarize([str(sweep)]) == 0 and (sweep / "summary.md").is_file()
    assert list((sweep / ".submitit").glob("*/*_submission.sh"))  # through sbatch, not in process
    assert "--gpus-per-task" not in next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()


def test_a_job_the_cluster_cancels_is_that_jobs_failure_and_the_sweep_ends(tmp_path: Path, mnist_dir: Path):
    """Without an accounting database submitit learns a job's end only from its result file; a
    cancelled job writes none (nor does one killed outright: the same path, the queue's state). The
    sweep must learn it from the queue, record it as that job's failure, report the other job, and
    end."""
    sweep = tmp_path / "sweep"
    command = cli_command(
        "stn.train", "--multirun", *ON_SLURM, *TINY, "data.train_subset=8192", "data.batch_size=32",
        "trainer.max_epochs=4", "seed=0,1", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    sweeping = subprocess.Popen(command, cwd=ROOT, env=cli_env(mnist_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        victim = None
        while victim is None:
            assert sweeping.poll() is None and time.monotonic() < deadline, "the jobs did not start"
            listing = subprocess.run(
                ["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True
            ).stdout
            running = [line.split()[0] for line in listing.splitlines() if line.endswith("RUNNING")]
            if len(running) == 2 and len(list(sweep.glob("*/checkpoints"))) == 2:
                victim = sorted(running)[1]  # seed=1's job
            time.sleep(0.5)
        subprocess.run(["scancel", victim], check=True)
        _, stderr = sweeping.communicate(timeout=240)
    finally:
        if sweeping.poll() is None:
            sweeping.kill()
    assert sweeping.returncode != 0
    assert f"SLURM job {victim} ended without a result (SLURM state " in stderr
    jobs = jobs_of(sweep)
    assert (jobs[0] / "metrics.json").is_file() and not (jobs[1] / "metrics.json").exists()
    assert victim not in _job_ids()


def test_a_pruned_asynchronous_sweep_on_the_cluster(tmp_path: Path, mnist_dir: Path):
    import optuna

    from stn.sweeps.storage import open_storage

    sweep = tmp_path / "sweep"
    process, jobs = multirun(
        "hparams_search=optuna", *ON_SLURM, "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.999}", *TINY,
        "trainer.max_epochs=3", sweep=sweep, data_dir=mnist_dir, check=False,
    )  # fmt: skip
    assert "every trial of the study 'stn' was pruned or failed (3 pruned)" in process.stderr
    assert len(jobs) == 3
    for job in jobs:  # each SLURM job reported to the study in the sweep's journal and stopped
        assert json.loads((job / "metrics.json").read_text())["pruned"]["epoch"] == 0
    study = optuna.load_study(
        study_name="stn", storage=open_storage(f"journal:{sweep / 'optuna_journal.log'}")
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 3
    assert list((sweep / ".submitit").glob("*/*_submission.sh"))  # through sbatch


def test_a_requeued_job_goes_on_from_its_last_checkpoint_in_its_folder(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    command = cli_command(
        "stn.train", "--multirun", *ON_SLURM, *TINY, "data.train_subset=8192", "trainer.max_epochs=4",
        "seed=0", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    stop = threading.Event()
    releaser = threading.Thread(target=_start_requeued_jobs_now, args=(stop,), daemon=True)
    releaser.start()
    try:
        process = subprocess.Popen(command, cwd=ROOT, env=cli_env(mnist_dir), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while not list(sweep.glob("0*/checkpoints/last.ckpt")):  # in epoch 1 or later (job "0": no swept key)
            assert process.poll() is None and time.monotonic() < deadline, "the job ended before the requeue"
            time.sleep(0.2)
        (job,) = _job_ids()
        requeued = time.monotonic()
        subprocess.run(["scontrol", "requeue", job], check=True)
        assert process.wait(timeout=400) == 0, process.stderr.read()[-3000:]
    finally:
        stop.set()
    (only,) = jobs_of(sweep)  # the same folder, no second one
    log = (only / "train.log").read_text()
    assert "stopped (SIGTERM)" in log and "resuming from it" in log
    assert _epochs_with_train_loss(only) == [0, 1, 2, 3]  # every epoch once: a continuous history
    metrics = json.loads((only / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.5 and time.monotonic() - requeued < 400


def test_a_job_past_its_time_limit_is_signalled_requeued_and_finishes(tmp_path: Path, mnist_dir: Path):
    """timeout_min=1 and the signal 30 s before it: submitit checkpoints and requeues the job at
    30 s, and the requeued job resumes from last.ckpt and finishes every epoch. The run is long
    enough (10 epochs of 16384 images, about 40 s on an idle core) to outlast the signal on a fast
    machine; a slow or loaded one may get one epoch a slot (each start costs 15-20 s of its 30 s on a
    2-core AVX2 machine, an epoch 8-10 s), so up to 15 requeues are allowed."""
    sweep = tmp_path / "sweep"
    stop = threading.Event()
    releaser = threading.Thread(target=_start_requeued_jobs_now, args=(stop,), daemon=True)
    releaser.start()
    try:
        _, jobs = multirun(
            *ON_SLURM, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30",
            "hydra.launcher.max_num_timeout=15",  # a slow CPU spends much of each 30-s slot starting up
            *TINY,
            "data.train_subset=16384", "trainer.max_epochs=10", "seed=0", sweep=sweep, data_dir=mnist_dir,
        )  # fmt: skip
    finally:
        stop.set()
    (job,) = jobs
    assert "resuming from it" in (job / "train.log").read_text()
    submitit_logs = "".join(path.read_text() for path in (sweep / ".submitit").glob("*/*_log.*"))
    assert "this job is timed-out" in submitit_logs
    assert _epochs_with_train_loss(job) == list(range(10))
    assert (job / "metrics.json").is_file()


def test_ddp_across_two_slurm_tasks_is_one_run_in_one_folder(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    _, jobs = multirun(
        *ON_SLURM, "hydra.launcher.tasks_per_node=2", "trainer=ddp_sim", *TINY, "data.train_subset=2048",
        "seed=0", sweep=sweep, data_dir=mnist_dir,
    )  # fmt: skip
    (job,) = jobs
    assert (job / "metrics.json").is_file()
    assert [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")] == [job]
    task_logs = sorted((sweep / ".submitit").glob("*/*_log.err"))
    assert len(task_logs) == 2  # two SLURM tasks, each its own process and logs
    # Lightning logs through Hydra's console handler: stdout (.out)
    texts = [err.read_text() + err.with_suffix(".out").read_text() for err in task_logs]
    assert any("GLOBAL_RANK: 0, MEMBER: 1/2" in t for t in texts)
    assert any("GLOBAL_RANK: 1, MEMBER: 2/2" in t for t in texts)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["hydra.launcher.partition=nope"],
            "hydra.launcher.partition=nope is not a partition of this SLURM cluster; allowed: debug",
        ),
        (["hydra.launcher.partition=debug", "num_threads=999"], "a job asks for 999 CPUs"),
        (["hydra.launcher.partition=debug", "hydra.launcher.mem_gb=100000"], "a job asks for 102,400,000 MB"),
        (["hydra.launcher.partition=debug", "trainer=gpu"], "a job asks for GPUs"),
        (
            ["hydra.launcher.timeout_min=-5"],
            "hydra.launcher.timeout_min=-5 is out of range: allowed integers >= 1",
        ),
    ],
)
def test_a_sweep_the_cluster_cannot_run_is_one_sentence_and_writes_nothing(
    overrides: list[str], message: str, tmp_path: Path, mnist_dir: Path
):
    sweep = tmp_path / "sweep"
    process = run(
        "stn.train", "--multirun", "hydra/launcher=slurm", *overrides, "seed=0,1", f"hydra.sweep.dir={sweep}",
        data_dir=mnist_dir, check=False,
    )  # fmt: skip
    assert_one_sentence_error(process, message)
    assert not sweep.exists()


def _slurm_script(clone: Path, command: str, link: Path, **env: str) -> subprocess.CompletedProcess:
    """tools/slurm.sh of a second clone at `clone`, its machine-wide link at `link` (not /etc/slurm)."""
    script = clone / "tools" / "slurm.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tools" / "slurm.sh", script)
    environment = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    return subprocess.run(["bash", str(script), command], capture_output=True, text=True, timeout=120,
                          env={**environment, "STN_SLURM_LINK": str(link), **env})  # fmt: skip


def _partition_answers(config: Path) -> bool:
    env = {**os.environ, "SLURM_CONF": str(config)}
    command = ["sinfo", "-h", "-p", "debug", "-o", "%T"]
    answer = subprocess.run(command, capture_output=True, text=True, env=env, timeout=20)
    return answer.returncode == 0 and answer.stdout.strip() in {"idle", "mixed", "allocated"}


def _daemons_of(config: Path) -> list[str]:
    listing = subprocess.run(
        ["pgrep", "-a", "-f", f"slurm.* -f {config}"], capture_output=True, text=True
    ).stdout
    return listing.splitlines()


def test_a_second_cluster_starts_beside_this_one_replaces_a_dead_link_and_stops_alone(tmp_path: Path):
    clone, link = tmp_path / "clone", tmp_path / "etc" / "slurm.conf"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "gone" / ".slurm" / "slurm.conf")  # a clone deleted with its cluster up
    config = clone / ".slurm" / "slurm.conf"
    this_cluster = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).resolve()
    try:
        started = _slurm_script(clone, "up", link)
        assert started.returncode == 0, started.stderr
        assert f"replacing {link}: it linked to {tmp_path / 'gone'}" in started.stdout
        assert link.resolve() == config and "is up" in started.stdout
        assert _partition_answers(config) and _partition_answers(this_cluster)
        ports = {line.split("=")[1] for line in config.read_text().splitlines() if "dPort=" in line}
        assert "6817" not in ports and len(ports) == 2  # its own ports, not SLURM's defaults
        assert len(_daemons_of(config)) >= 2

        again = _slurm_script(clone, "up", link)  # a second `up` finds it running
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        stopped = _slurm_script(clone, "down", link)
    assert "is stopped" in stopped.stdout
    assert _daemons_of(config) == [] and not link.exists() and not link.is_symlink()
    assert _partition_answers(this_cluster)  # this clone's cluster was left alone


def test_a_link_to_a_live_cluster_is_left_and_a_held_port_is_named(tmp_path: Path):
    clone, link = tmp_path / "clone", tmp_path / "etc" / "slurm.conf"
    link.parent.mkdir()
    other = tmp_path / "other.conf"
    other.write_text("ClusterName=other\n")
    link.symlink_to(other)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        refused = _slurm_script(clone, "up", link, STN_SLURM_PORT=str(port))
    assert_one_sentence_error(
        refused, f"error: port {port} (STN_SLURM_PORT={port} and the next) is held by python"
    )
    assert len(refused.stderr.strip().splitlines()) == 1
    assert link.resolve() == other  # another cluster's link is never taken
    try:
        started = _slurm_script(clone, "up", link)
        assert started.returncode == 0, started.stderr
        assert f"{link} -> {other} is another cluster's config (left as it is)" in started.stdout
        assert f"SLURM_CONF={clone / '.slurm' / 'slurm.conf'}" in started.stdout
        assert link.resolve() == other and _partition_answers(clone / ".slurm" / "slurm.conf")
    finally:
        _slurm_script(clone, "down", link)
    assert link.resolve() == other


def test_a_sweep_onto_a_drained_node_or_a_down_partition_is_one_sentence(tmp_path: Path, mnist_dir: Path):
    node = subprocess.run(
        ["sinfo", "-h", "-p", "debug", "-o", "%N"], capture_output=True, text=True
    ).stdout.strip()
    common = ["stn.train", "--multirun", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "seed=0,1"]
    try:
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=drain", "reason=disk_swap"], check=True
        )
        process = run(*common, f"hydra.sweep.dir={tmp_path / 'a'}", data_dir=mnist_dir, check=False)
        assert_one_sentence_error(process, f"no node of partition debug can run a job now: {node} is drain")
        assert "(disk_swap)" in process.stderr
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=True)
    try:
        subprocess.run(["scontrol", "update", "partitionname=debug", "state=down"], check=True)
        process = run(*common, f"hydra.sweep.dir={tmp_path / 'b'}", data_dir=mnist_dir, check=False)
        assert_one_sentence_error(process, "partition debug is down (not accepting jobs)")
    finally:
        subprocess.run(["scontrol", "update", "partitionname=debug", "state=up"], check=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert _job_ids() == []  # nothing was left pending
