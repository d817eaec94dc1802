"""Hydra's submitit SLURM launcher, told when the cluster ends or holds a job (the launcher plugin
itself, hydra_plugins/stn_slurm_launcher/, calls `launch_watched`).

submitit learns a job's state from `sacct`. A cluster without an accounting database (`make
slurm-up`'s, and many small ones) has none, so a job that ends without writing its result is
waited for forever: one cancelled with `scancel` (its run stops on SIGTERM with no result, as a
requeued one does, so that submitit waits for the requeue), one killed outright (SIGKILL, the
kernel's out-of-memory killer). Here the watcher falls back on `squeue -t all`, where the controller
keeps an ended job for MinJobAge (300 s by default): such a job is then done, and its result is an
error that names SLURM's state and reason, recorded as that job's failure while the sweep waits for
the others. A job held pending for a reason a sweep cannot wait out (a partition set down, a node
drained after submission) is named in one warning line, once.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from submitit.core import core, utils
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from stn.errors import UserError

log = logging.getLogger(__name__)

# states a job passes through while it runs or waits: not its end (submitit counts only some of them)
STILL_GOING = {
    "CONFIGURING": "RUNNING", "SIGNALING": "RUNNING", "STAGE_OUT": "COMPLETING", "RESIZING": "RUNNING",
    "SUSPENDED": "RUNNING", "STOPPED": "RUNNING", "REQUEUE_HOLD": "PENDING", "REQUEUE_FED": "PENDING",
}  # fmt: skip
# pending reasons a job waits out by itself (its turn, free cores, its begin time after a requeue)
ORDINARY_WAITS = ("None", "Priority", "Resources", "BeginTime", "Dependency", "JobArrayTaskLimit")
HELD_AFTER_S = 60.0  # a job pending this long for another reason is named


class JobEndedWithoutResult(UserError):
    """A SLURM job ended (cancelled, killed, failed) without writing its result."""


class QueueWatcher(SlurmInfoWatcher):
    """submitit's SLURM watcher, asking `squeue -t all` where `sacct` does not answer."""

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self._sacct: bool | None = None  # whether this cluster keeps accounting, asked once
        self._pending_since: dict[str, float] = {}
        self._named: set[tuple[str, str]] = set()

    def _accounting(self) -> bool:
        if self._sacct is None:
            try:
                answer = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=20)
                self._sacct = answer.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                self._sacct = False
        return self._sacct

    def _make_command(self) -> list[str] | None:
        if self._accounting():
            return super()._make_command()
        to_check = sorted({job.split("_")[0] for job in self._registered - self._finished})
        if not to_check:
            return None
        return ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%N|%r", "-j", ",".join(to_check)]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if self._accounting():
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        states: dict[str, dict[str, str]] = {}
        for line in text.splitlines():
            job, state, nodes, reason = (line.split("|") + ["", "", "", ""])[:4]
            if job:
                state = STILL_GOING.get(state, state)
                states[job] = {"JobID": job, "State": state, "NodeList": nodes, "Reason": reason}
                self._name_if_held(job, state, reason)
        return states

    def _name_if_held(self, job: str, state: str, reason: str) -> None:
        if state != "PENDING" or reason in ORDINARY_WAITS:
            self._pending_since.pop(job, None)
            return
        since = self._pending_since.setdefault(job, time.monotonic())
        if time.monotonic() - since >= HELD_AFTER_S and (job, reason) not in self._named:
            self._named.add((job, reason))
            log.warning(
                "SLURM holds job %s pending (reason: %s); it will not start until that changes", job, reason
            )

    def reason(self, job_id: str) -> str:
        return self.get_info(job_id, mode="cache").get("Reason", "")


@contextmanager
def ended_jobs_as_failures(job_overrides: Sequence[Sequence[str]]) -> Iterator[None]:
    """While the launcher waits: a job that ended without its result becomes that job's failure
    (a JobReturn with its sentence and its overrides, array task i being `job_overrides[i]`), so
    the sweep records it and goes on waiting for the others."""
    original = core.Job.results

    def results(job: core.Job) -> list[Any]:
        try:
            return original(job)
        except utils.UncompletedJobError:
            state = job.state
            reason = job.watcher.reason(job.job_id) if isinstance(job.watcher, QueueWatcher) else ""
            why = f"SLURM state {state}" + (f", reason {reason}" if reason and reason != "None" else "")
            sentence = (
                f"SLURM job {job.job_id} ended without a result ({why}): cancelled (scancel), killed "
                f"(out of memory, SIGKILL) or failed before it could finish; its log: {job.paths.stderr}"
            )
            log.error("%s", sentence)
            task = str(job.job_id).rpartition("_")[2]
            overrides = (
                list(job_overrides[int(task)]) if task.isdigit() and int(task) < len(job_overrides) else []
            )
            failure = JobReturn(
                overrides=overrides, status=JobStatus.FAILED, _return_value=JobEndedWithoutResult(sentence)
            )
            return [failure]

    core.Job.results = results  # type: ignore[method-assign]
    try:
        yield
    finally:
        core.Job.results = original  # type: ignore[method-assign]


def launch_watched(
    launcher: SlurmLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    """`launcher.launch`, its jobs' ends learnt from the queue where the cluster keeps no
    accounting, and a job that ended without its result recorded as that job's failure."""
    if not isinstance(SlurmJob.watcher, QueueWatcher):
        SlurmJob.watcher = QueueWatcher()
    with ended_jobs_as_failures(job_overrides):
        return launcher.launch(job_overrides, initial_job_idx)
