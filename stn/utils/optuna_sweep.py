"""Hydra's Optuna sweeper and TPE sampler, made safe to run again and to run twice at once (the
sweeper itself is a Hydra plugin, so it lives in hydra_plugins/stn_optuna_sweeper/).

- A study kept on disk (`hydra.sweeper.storage=sqlite:///...`) and run again draws *new* points:
  a seeded sampler would otherwise draw the very points of its first run again. The seed is moved
  on by the number of trials the study already holds, so a resumed study is still reproducible.
- Two sweeps started at once on a new SQLite file both create the study: one of them wins, and
  the other loads it instead of failing on the database's uniqueness check.
- A study whose every trial failed ends with one sentence saying so and where the errors are,
  not Optuna's "No trials are completed yet".
- A study that cannot run as asked (no trials, an unknown direction, a storage that is not a
  SQLite file) is refused in one sentence before its first trial (`check_sweeper`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from omegaconf import ListConfig
from optuna.samplers import TPESampler

from stn.errors import ConfigError


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


def check_sweeper(n_trials: Any, directions: list[str], storage: str | None) -> None:
    """ConfigError, before the first trial, for a study that cannot run as asked: no trials, a
    direction Optuna does not know, or a storage that is not a SQLite file this machine can open."""
    if not (isinstance(n_trials, int) and not isinstance(n_trials, bool) and n_trials >= 1):
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials} is out of range: allowed integers >= 1")
    for direction in directions:
        if direction.lower() not in DIRECTIONS:
            raise ConfigError(
                f"hydra.sweeper.direction={direction} is out of range: allowed {' | '.join(DIRECTIONS)}"
            )
    if not storage:
        return
    if not str(storage).startswith("sqlite:///"):
        raise ConfigError(
            f"hydra.sweeper.storage={storage} is out of range: allowed sqlite:///<file> or null (in memory); "
            "other databases need their own driver and server, which this project does not set up"
        )
    path = Path(str(storage).removeprefix("sqlite:///"))
    if path.exists() and not path.is_file():
        raise ConfigError(f"hydra.sweeper.storage={storage}: {path} is not a file")
    if path.is_file():
        with path.open("rb") as file:
            header = file.read(16)
        if header and header != b"SQLite format 3\x00":
            raise ConfigError(f"hydra.sweeper.storage={storage}: {path} is not a SQLite database")
    elif not path.parent.is_dir():
        raise ConfigError(f"hydra.sweeper.storage={storage}: its folder {path.parent} does not exist")


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
