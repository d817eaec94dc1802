"""The project's SLURM launcher (hydra/launcher=slurm): Hydra's submitit launcher with the same
config, told when the cluster cancels, kills or holds a job (stn/sweeps/slurm_launcher.py).

Hydra imports every module of hydra_plugins when it starts, so this one imports only Hydra's
Launcher; submitit's launcher is imported when a sweep sets it up (the `sweeps` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.plugins.launcher import Launcher


class StnSlurmLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.submitit: Any = None  # Hydra's SlurmLauncher, built at setup

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

        self.submitit = SlurmLauncher(**self.params)
        self.submitit.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from stn.sweeps.slurm_launcher import launch_watched

        return launch_watched(self.submitit, job_overrides, initial_job_idx)
