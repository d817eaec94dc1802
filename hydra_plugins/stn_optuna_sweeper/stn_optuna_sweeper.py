"""The Optuna sweeper of `hparams_search=optuna`, on Optuna's ask-and-tell interface (Optuna 4 or
newer): ask the study for a batch of trials, launch their jobs with Hydra's launcher, tell it
each job's result. A failed job is a failed trial and the study goes on.

Hydra finds sweepers only in the `hydra_plugins` package, and imports every module there when any
command starts; so this module imports neither Optuna nor `stn` at its top: they are imported when
a sweep starts (the `sweeps` extra). The science (search space, sampler, checks) is in
stn/sweeps/optuna_search.py; the config and its keys are in conf/hydra/sweeper/optuna.yaml.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class StnOptunaSweeper(Sweeper):
    """Hydra's sweeper interface over an Optuna study: resumable on SQLite, race-free to create,
    a study whose every trial failed ends with one sentence."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None = None,
    ) -> None:
        self.sampler, self.direction, self.storage = sampler, direction, storage
        self.study_name, self.n_trials, self.n_jobs = study_name, n_trials, n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = params or {}
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        from stn.errors import ConfigError

        try:
            study, directions = self._open_study()
            searched, fixed = self._search_space(arguments)
        except ConfigError as error:
            raise SystemExit(f"error: {error}") from None
        log.info(
            "Study %s (%s), %d trials, %d at a time, sampler %s",
            study.study_name, self.storage or "in memory", self.n_trials, self.n_jobs,
            type(self.sampler).__name__,
        )  # fmt: skip
        remaining = self.n_trials
        while remaining > 0:
            batch = min(self.n_jobs, remaining)
            trials = [study.ask(searched) for _ in range(batch)]
            returns = self.launcher.launch(
                [self._overrides(trial.params, fixed) for trial in trials], initial_job_idx=self.job_idx
            )
            self.job_idx += len(returns)
            self._tell(study, trials, returns, len(directions))
            remaining -= batch
        self._write_results(study, directions)

    def _open_study(self) -> tuple[Any, list[str]]:
        import optuna

        from stn.errors import ConfigError
        from stn.sweeps.optuna_search import check_sweeper, create_study, directions_of

        directions = directions_of(self.direction)
        check_sweeper(self.n_trials, directions, self.storage)
        if not (isinstance(self.n_jobs, int) and self.n_jobs >= 1):
            raise ConfigError(f"hydra.sweeper.n_jobs={self.n_jobs} is out of range: allowed integers >= 1")
        if not 0.0 <= float(self.max_failure_rate) <= 1.0:
            raise ConfigError(
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate} is out of range: allowed 0.0 to 1.0"
            )
        try:
            if self.storage:
                create_study(self.storage, self.study_name, directions)
            study = optuna.create_study(
                study_name=self.study_name, storage=self.storage, sampler=self.sampler,
                directions=directions, load_if_exists=True,
            )  # fmt: skip
        except Exception as error:  # the database itself (locked, read-only, a driver missing)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"the Optuna storage hydra.sweeper.storage={self.storage} cannot be opened ({first[:200]})"
            ) from None
        return study, directions

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        from stn.sweeps.optuna_search import search_space

        return search_space([*(f"{key}={value}" for key, value in self.params.items()), *arguments])

    @staticmethod
    def _overrides(params: dict[str, Any], fixed: dict[str, str]) -> Sequence[str]:
        return tuple(f"{key}={value}" for key, value in {**params, **fixed}.items())

    def _tell(self, study: Any, trials: list[Any], returns: list[Any], directions: int) -> None:
        from optuna.trial import TrialState

        from stn.sweeps.optuna_search import objective_values

        failed = 0
        for trial, job in zip(trials, returns, strict=True):
            try:
                values = objective_values(job.return_value, directions)  # raises the job's own error
            except Exception as error:
                study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d failed: %s", trial.number, str(error).strip().splitlines()[-1:])
                failed += 1
            else:
                study.tell(trial, values)
        if failed / len(returns) > self.max_failure_rate:
            raise SystemExit(
                f"error: {failed} of {len(returns)} trials failed, more than "
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate}; each trial's error is in its "
                "job folder's train.log (python -m stn.summarize <sweep folder>)"
            )

    def _write_results(self, study: Any, directions: list[str]) -> None:
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise SystemExit(
                f"error: every trial of the study {study.study_name!r} failed, so it has no best point; each "
                "trial's error is in its job folder's train.log (python -m stn.summarize <sweep folder>)"
            )
        if len(directions) == 1:
            best = study.best_trial
            results: dict[str, Any] = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info("Best parameters: %s, value %s", best.params, best.value)
        else:
            results = {
                "name": "optuna",
                "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials],
            }
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), path)
