"""Trials that stop early: `hydra.sweeper.pruner` takes any Optuna pruner by `_target_`
(`optuna.pruners.MedianPruner`, `HyperbandPruner`, ...). The sweeper gives each job its trial's
number (`optuna_trial`); the job opens the study in the shared storage, reports its monitored
validation metric after every validation (stn/callbacks/study_pruning.py), and stops when the
pruner says so. A pruned job ends normally (exit 0, its checkpoints and CSV rows kept, not tested)
and returns `PrunedTrial`, which the sweeper tells the study as PRUNED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stn.errors import Allowed, ConfigError, first_line, out_of_range

KEY = "hydra.sweeper.pruner"


@dataclass(frozen=True)
class PrunedTrial:
    """What a pruned job returns to the sweeper: where it stopped and the value it stopped at."""

    epoch: int
    metric: str
    value: float


def build_pruner(config: Any) -> Any:
    """The Optuna pruner a `{_target_: ..., ...}` config names, or None for none; ConfigError in one
    sentence for a target that is not a pruner or arguments it does not take."""
    if config is None:
        return None
    if not isinstance(config, (dict, DictConfig)) or "_target_" not in config:
        allowed = Allowed(lambda _: False, "null or {_target_: optuna.pruners.<Pruner>, ...}")
        raise ConfigError(out_of_range(KEY, config, allowed))
    import optuna
    from hydra.utils import get_class, instantiate

    target = str(config["_target_"])
    try:
        cls = get_class(target)
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, optuna.pruners.BasePruner)):
        known = ", ".join(
            f"optuna.pruners.{name}"
            for name in ("MedianPruner", "PercentilePruner", "SuccessiveHalvingPruner", "HyperbandPruner",
                         "ThresholdPruner", "PatientPruner", "WilcoxonPruner")
        )  # fmt: skip
        raise ConfigError(f"{KEY}._target_={target} is not an Optuna pruner; allowed e.g. {known}")
    arguments = (
        OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
    )
    try:
        return instantiate(arguments, _convert_="all")
    except Exception as error:
        cause = error.__cause__ or error
        raise ConfigError(
            f"{KEY} ({target.split('.')[-1]}) refused its arguments: {first_line(cause)}"
        ) from None


def trial_of(storage: str, study_name: str, number: int, pruner: Any) -> Any:
    """The running trial `number` of the stored study, as an Optuna trial that reports and prunes."""
    import optuna

    from stn.sweeps.storage import open_storage

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage), pruner=pruner)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.Trial(study, trial_id)
