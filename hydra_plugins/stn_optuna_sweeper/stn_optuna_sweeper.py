"""The Optuna sweeper of `hparams_search=optuna`, on Optuna's ask-and-tell interface (Optuna 4 or
newer): ask the study for a trial, launch its job with Hydra's launcher, tell the study the job's
result. With `n_jobs` > 1 on a launcher that runs jobs apart (joblib, SLURM) there is no batch
barrier: `n_jobs` trials are in flight at all times, and when one ends (finished, pruned, failed)
the next point is asked and launched at once. A failed job is a failed trial and the study goes on;
a pruned job (`hydra.sweeper.pruner`) is a PRUNED trial.

Hydra finds sweepers only in the `hydra_plugins` package, and imports every module there when any
command starts; so this module imports neither Optuna nor `stn` at its top: they are imported when
a sweep starts (the `sweeps` extra). The science is in stn/sweeps/ (the search space and sampler in
optuna_search.py, where a study is kept in storage.py, pruning in pruning.py); the config and its
keys are in conf/hydra/sweeper/optuna.yaml.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

OWNER = "stn_sweep"  # a trial's user attribute: the host and process of the sweep that launched it


class StnOptunaSweeper(Sweeper):
    """Hydra's sweeper interface over an Optuna study: resumable on a stored study, race-free to
    create, asynchronous, pruning; a study whose every trial failed ends with one sentence."""

    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        pruner: Any = None,
        asynchronous: bool = True,
        params: DictConfig | None = None,
    ) -> None:
        self.sampler_config, self.pruner_config = sampler, pruner
        self.direction, self.storage = direction, storage
        self.study_name, self.n_trials, self.n_jobs = study_name, n_trials, n_jobs
        self.max_failure_rate, self.asynchronous = max_failure_rate, asynchronous
        self.params = params or {}
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # -- the sweep ------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> None:
        from stn.errors import ConfigError, UserError
        from stn.sweeps.storage import shown

        try:
            study, directions, pruner = self._open_study()
            searched, fixed = self._search_space(arguments)
            self._check_space_against_study(study, searched)
        except ConfigError as error:
            raise SystemExit(f"error: {error}") from None
        self._warn_if_nothing_to_prune(pruner, fixed)
        parallel = self.n_jobs > 1 and type(self.launcher).__name__ != "BasicLauncher"
        log.info(
            "Study %s (%s), %d trials, %d at a time%s, sampler %s, pruner %s",
            study.study_name, shown(self.storage), self.n_trials, self.n_jobs,
            "" if parallel or self.n_jobs == 1 else " (in turn: the basic launcher runs one job at a time)",
            type(study.sampler).__name__, type(pruner).__name__ if pruner else "none",
        )  # fmt: skip
        self._failed = self._told = 0
        in_flight: dict[Future, Any] = {}
        pool = ThreadPoolExecutor(max_workers=self.n_jobs) if parallel else None
        try:
            launched = 0
            while launched < self.n_trials or in_flight:
                # asynchronous: refill a slot as soon as it frees; else (Hydra's own Optuna sweeper's
                # way) launch a batch of n_jobs only once the whole last batch has ended
                slots = (self.n_jobs if parallel else 1) if self.asynchronous or not in_flight else 0
                while launched < self.n_trials and len(in_flight) < slots:
                    trial = self._ask(study, searched)
                    overrides = self._overrides(trial, fixed)
                    job = self.job_idx
                    self.job_idx += 1
                    trial.set_user_attr("job", job)
                    launched += 1
                    if pool is None:  # the basic launcher runs the job here, in this thread
                        future: Future = Future()
                        future.set_result(self._launch(overrides, job))
                    else:
                        future = pool.submit(self._launch, overrides, job)
                    in_flight[future] = (trial, job)
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: in_flight[f][1]):
                    trial, job = in_flight.pop(future)
                    self._tell(study, trial, job, future, len(directions))
        except UserError as error:  # the storage went away mid-study
            raise SystemExit(f"error: {error}") from None
        finally:
            self._fail_unfinished(study, [trial for trial, _ in in_flight.values()])
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._write_results(study, directions)

    def _launch(self, overrides: Sequence[str], job: int) -> Any:
        return self.launcher.launch([overrides], initial_job_idx=job)[0]

    # -- the study ------------------------------------------------------------------------------

    def _open_study(self) -> tuple[Any, list[str], Any]:
        import optuna
        from hydra.utils import instantiate

        from stn.errors import ConfigError, first_line
        from stn.sweeps.optuna_search import check_sweeper, create_study
        from stn.sweeps.pruning import build_pruner
        from stn.sweeps.storage import absolute, open_storage
        from stn.sweeps.study_plots import STUDY_FILE

        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        directions = check_sweeper(self)
        if len(directions) > 1:
            raise ConfigError(
                f"hydra.sweeper.direction has {len(directions)} directions, but a run returns one value "
                "(optimized_metric); give one direction"
            )
        pruner = build_pruner(self.pruner_config)
        try:
            sampler = instantiate(self.sampler_config) if self.sampler_config is not None else None
        except Exception as error:
            cause = error.__cause__ or error
            raise ConfigError(f"hydra.sweeper.sampler cannot be built: {first_line(cause)}") from None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if pruner is not None and not self.storage:  # the jobs report from their own processes
            self.storage = f"journal:{sweep_dir / 'optuna_journal.log'}"
            sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage = absolute(self.storage) if self.storage else None
        try:
            storage = open_storage(self.storage)
            if storage is not None:
                create_study(storage, self.study_name, directions)
            study = optuna.create_study(
                study_name=self.study_name, storage=storage, sampler=sampler, pruner=pruner,
                directions=directions, load_if_exists=True,
            )  # fmt: skip
        except ConfigError:
            raise
        except Exception as error:  # the database itself (locked, read-only, down, a wrong password)
            raise ConfigError(
                f"the Optuna storage hydra.sweeper.storage={self.storage} cannot be opened "
                f"({first_line(error)[:200]})"
            ) from None
        self._check_stored_study(study, directions)
        self._fail_stale(study)
        if self.storage:  # where stn.summarize finds the study
            sweep_dir.mkdir(parents=True, exist_ok=True)
            study_file = {"storage": self.storage, "study_name": study.study_name}
            OmegaConf.save(OmegaConf.create(study_file), sweep_dir / STUDY_FILE)
        return study, directions, pruner

    def _check_stored_study(self, study: Any, directions: list[str]) -> None:
        """A stored study asked for what it cannot honour: another direction, another space."""
        from stn.errors import ConfigError

        stored = [d.name.lower() for d in study.directions]
        if stored != directions:
            does = "maximizes" if stored == ["maximize"] else "minimizes"
            raise ConfigError(
                f"the stored study {study.study_name!r} {does}, "
                f"but hydra.sweeper.direction={','.join(directions)}; keep its direction or name another "
                "study (hydra.sweeper.study_name=...)"
            )

    def _check_space_against_study(self, study: Any, searched: dict[str, Any]) -> None:
        from optuna.distributions import check_distribution_compatibility

        from stn.errors import ConfigError

        trials = study.get_trials(deepcopy=False)
        stored = trials[0].distributions if trials else {}  # one trial's distributions are the study's
        for key, distribution in stored.items():
            if key in searched:
                try:
                    check_distribution_compatibility(distribution, searched[key])
                except ValueError:
                    raise ConfigError(
                        f"the stored study {study.study_name!r} searched {key} over {distribution}, and "
                        f"this sweep asks {searched[key]}; keep the space or name another study "
                        "(hydra.sweeper.study_name=...)"
                    ) from None

    def _fail_stale(self, study: Any) -> None:
        """Trials left RUNNING by a sweep on this machine that is no longer running (killed) are
        marked failed, so their points may be asked again."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        stale = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get(OWNER, ""))
            owner_host, _, pid = owner.rpartition(":")
            if owner_host == host and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                stale.append(trial)
        for trial in stale:
            study.tell(trial.number, state=TrialState.FAIL)
        if stale:
            log.warning(
                "%d trials were left running by a sweep that was stopped (trials %s): marked failed",
                len(stale), ", ".join(str(t.number) for t in stale),
            )  # fmt: skip

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        from stn.sweeps.optuna_search import search_space

        return search_space([*(f"{key}={value}" for key, value in self.params.items()), *arguments])

    def _warn_if_nothing_to_prune(self, pruner: Any, fixed: dict[str, str]) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():  # a length such as experiment=paper's reads hydra:runtime.choices
            HydraConfig.instance().set_config(self.config)
        epochs = fixed.get("trainer.max_epochs")
        if epochs is None:
            epochs = OmegaConf.select(self.config, "trainer.max_epochs", throw_on_resolution_failure=False)
        if pruner is not None and str(epochs) == "1":
            log.warning(
                "The study has a pruner, but each trial trains one epoch (trainer.max_epochs=1): a trial is "
                "judged only after its last epoch, so nothing will be pruned"
            )

    def _ask(self, study: Any, searched: dict[str, Any]) -> Any:
        trial = study.ask(searched)
        trial.set_user_attr(OWNER, self._owner)
        return trial

    def _overrides(self, trial: Any, fixed: dict[str, str]) -> Sequence[str]:
        chosen = tuple(f"{key}={value}" for key, value in {**trial.params, **fixed}.items())
        if not self.storage:  # an in-memory study: the job has nothing to report to
            return chosen
        # the job reports to the stored study as this trial (stn/callbacks/study_pruning.py)
        return (*chosen, f"optuna_trial={trial.number}", f"hydra.sweeper.storage='{self.storage}'")

    def _tell(self, study: Any, trial: Any, job: int, future: Future, directions: int) -> None:
        from optuna.trial import TrialState

        from stn.errors import first_line
        from stn.sweeps.optuna_search import objective_values
        from stn.sweeps.pruning import PrunedTrial

        self._told += 1
        try:
            value = future.result().return_value  # raises the job's own error
            if isinstance(value, PrunedTrial):
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d (job %d) pruned after epoch %d: %s %.4f", trial.number, job,
                         value.epoch, value.metric, value.value)  # fmt: skip
            else:
                study.tell(trial, objective_values(value, directions))
        except Exception as error:
            if _is_storage_error(error):
                raise _storage_down(self.storage, error) from None
            study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d (job %d) failed: %s", trial.number, job, first_line(error))
            self._failed += 1
        self._record(study)
        if self._failed / self._told > self.max_failure_rate:
            raise SystemExit(
                f"error: {self._failed} of {self._told} trials failed, more than "
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate}; each trial's error is in its "
                "job folder's train.log (python -m stn.summarize <sweep folder>)"
            )

    def _fail_unfinished(self, study: Any, trials: list[Any]) -> None:
        """The sweep is ending with trials in flight (stopped, failed): they are FAIL, not RUNNING."""
        from optuna.trial import TrialState

        for trial in trials:
            try:
                study.tell(trial, state=TrialState.FAIL)
            except Exception:  # told already, or the storage is gone: nothing more to do here
                continue
        if trials:
            with contextlib.suppress(Exception):  # a storage that went away: its own sentence follows
                self._record(study)

    def _record(self, study: Any) -> None:
        """trials.csv in the sweep folder: each trial's job, state, value, start and end (the
        summary page's timeline and its groups)."""
        from stn.sweeps.optuna_search import trial_rows
        from stn.sweeps.study_plots import TRIALS_FILE
        from stn.utils.files import csv_text, write_atomically

        path = Path(str(self.config.hydra.sweep.dir)) / TRIALS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(OWNER) == self._owner]
        write_atomically(path, csv_text(trial_rows(mine)))

    def _write_results(self, study: Any, directions: list[str]) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        if not any(trial.state == TrialState.COMPLETE for trial in trials):
            pruned = sum(trial.state == TrialState.PRUNED for trial in trials)
            which = "failed" if not pruned else f"was pruned or failed ({pruned} pruned)"
            raise SystemExit(
                f"error: every trial of the study {study.study_name!r} {which}, so it has no best point; "
                "each trial's end is in its job folder's train.log (python -m stn.summarize <sweep folder>)"
            )
        best = study.best_trial
        results: dict[str, Any] = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        log.info("Best parameters: %s, value %s", best.params, best.value)
        path = Path(self.config.hydra.sweep.dir) / "optimization_results.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), path)


def _is_storage_error(error: BaseException) -> bool:
    module = type(error).__module__
    return module.startswith(("sqlalchemy", "psycopg")) or "StorageInternalError" in type(error).__name__


def _storage_down(storage: str | None, error: BaseException) -> Exception:
    from stn.errors import UserError, first_line

    return UserError(
        f"the Optuna storage hydra.sweeper.storage={storage} stopped answering mid-study "
        f"({first_line(error)[:200]}); the trials told so far are kept in it, and the same command "
        "continues the study once it answers"
    )
