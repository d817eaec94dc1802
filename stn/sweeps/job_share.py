"""The jobs of a parallel sweep (hydra/launcher=joblib, submitit): sharing one machine between
them, and stopping them with the sweep.

Without a cap every job starts torch with one thread per core, so N jobs run N x cores threads on
the cores and all of them slow down; N jobs on one GPU each cache as much memory as they like until
one runs out. Each job therefore takes its share: cores // jobs threads, one GPU chosen by its job
number, and at most its share of that GPU's memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from stn.utils.processes import descendants

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobShare:
    threads: int | None  # torch intra-op threads; None: leave torch's default
    gpu_index: int | None = None  # which GPU this job trains on; None: the trainer's choice
    gpu_memory_fraction: float | None = None  # of that GPU; None: no cap


def concurrent_jobs(launcher: DictConfig | None, cpu_count: int) -> int:
    """How many jobs a launcher runs at once: joblib's n_jobs (-1 = one per core); 1 otherwise."""
    if launcher is None or "n_jobs" not in launcher:
        return 1
    n_jobs = launcher.n_jobs
    return cpu_count if n_jobs is None or n_jobs < 0 else max(int(n_jobs), 1)


def job_share(
    num_threads: int | None,
    jobs: int,
    job_number: int,
    cpu_count: int,
    gpu_count: int,
    cpus_per_task: int | None = None,
) -> JobShare:
    """This job's threads and GPU when `jobs` run at once on `cpu_count` cores and `gpu_count` GPUs.

    `num_threads` (the config key) wins; a cluster task's `cpus_per_task` comes next."""
    if num_threads is not None:
        threads = num_threads
    elif cpus_per_task:
        threads = cpus_per_task
    elif jobs > 1:
        threads = max(cpu_count // jobs, 1)
    else:
        threads = None
    if jobs <= 1 or gpu_count == 0:
        return JobShare(threads)
    jobs_per_gpu = math.ceil(jobs / gpu_count)
    return JobShare(threads, job_number % gpu_count, 1.0 / jobs_per_gpu)


def apply_job_share(cfg: DictConfig, hydra_cfg: DictConfig | None) -> JobShare:
    """Set torch's threads and, for a single-GPU trainer, this job's GPU and memory cap."""
    cpu_count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    launcher = hydra_cfg.launcher if hydra_cfg is not None else None
    job_number = int(hydra_cfg.job.get("num", 0) or 0) if hydra_cfg is not None else 0
    cpus_per_task = launcher.get("cpus_per_task") if launcher is not None else None
    share = job_share(
        cfg.get("num_threads"),
        concurrent_jobs(launcher, cpu_count),
        job_number,
        cpu_count,
        torch.cuda.device_count(),
        cpus_per_task,
    )
    if share.threads is not None:
        torch.set_num_threads(share.threads)
    trainer = cfg.get("trainer") or {}
    single_gpu = trainer.get("accelerator") in ("gpu", "cuda", "auto") and trainer.get("devices") in (1, "1")
    if share.gpu_index is not None and single_gpu:
        with open_dict(cfg):
            cfg.trainer.devices = [share.gpu_index]
        torch.cuda.set_per_process_memory_fraction(share.gpu_memory_fraction, device=share.gpu_index)
        log.info(
            "Parallel job %d: GPU %d, at most %.0f%% of its memory",
            job_number,
            share.gpu_index,
            100 * share.gpu_memory_fraction,
        )
    if share.threads is not None:
        log.info("torch threads: %d", share.threads)
    return share


def stop_workers_on_sigterm(grace_seconds: float = 5.0) -> None:
    """On SIGTERM or SIGHUP (its terminal closed), a sweep stops its job processes (joblib's loky
    workers do not get the signal and would go on training into the sweep folder) before it exits
    with 128 + the signal's number: SIGTERM to each,
    so a job ends as a stopped run does, then SIGKILL to any still there after `grace_seconds`."""

    def stop(signum: int, frame: Any) -> None:
        workers = descendants(os.getpid())
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.1)
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:  # reap the ones that ended
                    pass
        for pid in descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stopped = f"its {len(workers)} job processes were stopped too"
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) has no stderr left to say it on
            print(f"error: the sweep was stopped ({signal.Signals(signum).name}); {stopped}", file=sys.stderr)
        os._exit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)  # the terminal closed: its workers must not train on
