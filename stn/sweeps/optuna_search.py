"""The Optuna search behind `hparams_search=optuna`: the search space read from Hydra's override
grammar, a TPE sampler that resumes, and the checks and study creation that make a study safe to
run again and twice at once. The sweeper that drives it (ask a trial, launch its job, tell the
result) is a Hydra plugin, so it lives in hydra_plugins/stn_optuna_sweeper/; it imports this module
only when a sweep starts, so a plain command never imports Optuna.

- The space: `choice(...)` is categorical, `interval(a, b)` uniform over the reals (`tag(log, ...)`:
  log-uniform), `range(a, b, s)` the values Hydra's range gives (b excluded).

- A study kept on disk (`hydra.sweeper.storage=sqlite:///...`) and run again draws *new* points:
  a seeded sampler would otherwise draw the very points of its first run again. The seed is moved
  on by the number of trials the study already holds, so a resumed study is still reproducible.
- Two sweeps started at once on a new SQLite file both create the study: one of them wins, and
  the other loads it instead of failing on the database's uniqueness check.
- A study whose every trial failed ends with one sentence saying so and where the errors are,
  not Optuna's "No trials are completed yet".
- A study that cannot run as asked (no trials, an unknown direction, a storage that cannot work)
  is refused in one sentence before its first trial (`check_sweeper`); where a study is kept
  (stn/sweeps/storage.py) is its own module.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from omegaconf import ListConfig
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import TPESampler

from stn.errors import ConfigError, check_value, integers, numbers, one_of


class ResumingTPESampler(TPESampler):
    """Optuna's TPE sampler whose seed moves on by the trials a resumed study already holds."""

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._arguments, self._base_seed, self._placed = kwargs, seed, False

    def infer_relative_search_space(self, study: optuna.Study, trial: Any) -> dict[str, Any]:
        if not self._placed:  # the first trial of this run: how many came before it
            self._placed = True
            earlier = len(study.get_trials(deepcopy=False)) - 1
            if earlier > 0 and self._base_seed is not None:
                TPESampler.__init__(self, seed=self._base_seed + earlier, **self._arguments)
        return super().infer_relative_search_space(study, trial)


def directions_of(direction: Any) -> list[str]:
    """`hydra.sweeper.direction` (a direction or a list of them, names or Hydra's enum) as names."""
    directions = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    return [str(getattr(d, "name", d)) for d in directions]


DIRECTIONS = ("minimize", "maximize")


def check_sweeper(sweeper: Any) -> list[str]:
    """The study's directions; ConfigError naming the key, before the first trial, for a sweeper
    config that cannot run as asked (no trials, an unknown direction, a failure rate that is not
    a share, a storage that cannot work, a study kept without a name)."""
    from stn.sweeps.storage import check_storage

    check_value("hydra.sweeper.n_trials", sweeper.n_trials, integers(1))
    check_value("hydra.sweeper.n_jobs", sweeper.n_jobs, integers(1))
    check_value("hydra.sweeper.max_failure_rate", sweeper.max_failure_rate, numbers(0.0, 1.0))
    check_value("hydra.sweeper.asynchronous", getattr(sweeper, "asynchronous", True), one_of(True, False))
    directions = directions_of(sweeper.direction)
    for direction in directions:
        check_value("hydra.sweeper.direction", direction.lower(), one_of(*DIRECTIONS))
    check_storage(sweeper.storage)
    if sweeper.storage and not sweeper.study_name:
        raise ConfigError(
            "hydra.sweeper.study_name is null with a storage, which would start a new unnamed study each "
            "time; name the study (hydra.sweeper.study_name=mine)"
        )
    return [direction.lower() for direction in directions]


def create_study(storage: str, study_name: str | None, directions: list[str], attempts: int = 10) -> None:
    """Create the study (or find it there): two sweeps creating one study at once both succeed."""
    for attempt in range(attempts):
        try:
            optuna.create_study(
                storage=storage, study_name=study_name, directions=directions, load_if_exists=True
            )
            return
        except Exception:  # the other sweep won the race (IntegrityError, DuplicatedStudyError)
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def distribution_of(override: Override) -> BaseDistribution:
    """Optuna's distribution for one sweep override of Hydra's grammar (the space is checked
    non-empty before, by `stn.sweeps.checks.check_space`)."""
    space = override.value()
    if isinstance(space, IntervalSweep):  # Hydra's intervals are real (interval(1, 8) too)
        return FloatDistribution(float(space.start), float(space.end), log="log" in space.tags)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if isinstance(space, RangeSweep) and not space.shuffle and len(values) > 1:
        step = values[1] - values[0]
        if all(isinstance(v, int) for v in values) and step > 0:
            return IntDistribution(values[0], values[-1], step=step)
        if step > 0:
            return FloatDistribution(float(values[0]), float(values[-1]), step=float(step))
    if not isinstance(space, (ChoiceSweep, RangeSweep)) and len(values) != 1:
        raise ConfigError(f"{override.input_line} is a sweep Optuna cannot search")
    return CategoricalDistribution(values)


def search_space(arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """(the searched keys and their distributions, the fixed keys and their values) from the
    sweeper's `params` and the command line's overrides, in that order (the command line wins)."""
    searched: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        searched.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            searched[key] = distribution_of(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return searched, fixed


def objective_values(value: Any, count: int) -> list[float]:
    """A job's return value as the study's objective values (one per direction)."""
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if len(values) != count:
        raise ValueError(f"the job returned {len(values)} values for {count} directions: {value!r}")
    return [float(v) for v in values]


TRIAL_COLUMNS = ["trial", "job", "state", "value", "start", "end", "pruned_after_epoch", "params"]


def trial_rows(trials: list[optuna.trial.FrozenTrial]) -> list[list[Any]]:
    """A study's trials as the rows of a sweep folder's trials.csv (with its header): the job that
    ran each (the sweeper's `optuna_trial` override), its state, value, start and end."""
    import json

    rows: list[list[Any]] = [TRIAL_COLUMNS]
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        rows.append(
            [
                trial.number,
                trial.user_attrs.get("job", ""),
                trial.state.name,
                "" if trial.value is None else f"{trial.value:.6g}",
                trial.datetime_start.isoformat() if trial.datetime_start else "",
                trial.datetime_complete.isoformat() if trial.datetime_complete else "",
                steps[-1] if trial.state.name == "PRUNED" and steps else "",
                json.dumps(trial.params, sort_keys=True),
            ]
        )
    return rows
