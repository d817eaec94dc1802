"""Hydra's Optuna sweeper, safe to run again and twice at once (stn/utils/optuna_sweep.py says how).
Hydra finds sweepers only in the `hydra_plugins` package, so the class is defined here."""

from __future__ import annotations

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from stn.errors import ConfigError
from stn.utils.optuna_sweep import check_sweeper, create_study, directions_of


class StnOptunaSweeper(OptunaSweeper):
    """Hydra's Optuna sweeper: a new study is created race-free, and a study whose every trial
    failed ends with one sentence."""

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        try:
            check_sweeper(impl.n_trials, directions_of(impl.direction), impl.storage)
            if impl.storage:
                create_study(impl.storage, impl.study_name, directions_of(impl.direction))
        except ConfigError as error:
            raise SystemExit(f"error: {error}") from None
        except Exception as error:  # the database itself (locked, read-only, a driver missing)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            storage = f"hydra.sweeper.storage={impl.storage}"
            raise SystemExit(
                f"error: the Optuna storage {storage} cannot be opened ({first[:200]})"
            ) from None
        try:
            return super().sweep(arguments)
        except ValueError as error:
            if "No trials are completed yet" not in str(error):
                raise
            raise SystemExit(  # a sentence, not a traceback from inside Hydra
                f"error: every trial of the study {impl.study_name!r} failed, so it has no best point; each "
                "trial's error is in its job folder's train.log (python -m stn.summarize <sweep folder>)"
            ) from None
