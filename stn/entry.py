"""The command line of every entry point (train, eval, predict, export): one decorator.

    cli = entry("train.yaml", train_task)   # then `python -m stn.train ...`, `stn-train ...`
    cli = entry("predict.yaml", "stn.inference.predict:predict")  # imported when the task runs

It is Hydra's main over conf/<config_name> with the task wrapped in `user_errors_reported` (one
sentence, no traceback), and what Hydra refuses before the task starts (a misspelled key, a wrong
group option) becomes one sentence with the nearest valid names instead of Hydra's message: Hydra's
stderr is held back until the task starts, and only when Hydra refuses the command line is the
"did you mean" search run. This module imports neither torch nor Lightning, so `--cfg`, `--help`,
tab completion and refused command lines answer at once; the task imports them when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from stn.environment import lightning_lines_once, quiet_known_noise
from stn.errors import ConfigError, first_line, hold_stderr, release_stderr, stderr_held, user_errors_reported
from stn.paths import CONF_DIR
from stn.runs.stops import stop_on_sigterm

Task = Callable[[DictConfig], Any]

quiet_known_noise()  # here too: a joblib worker composes its job's config before the task runs


def _task(task: Task | str) -> Task:
    """The task itself, or the one a "module:function" reference names (imported now, after Hydra
    has composed the config, so that nothing heavy is imported before)."""
    if not isinstance(task, str):
        return task
    import importlib

    module, _, function = task.partition(":")
    return getattr(importlib.import_module(module), function)


EMPTY_RUN_DIR = (
    "hydra.run.dir is empty, which would write the run into the folder the command was started from; "
    "name a folder (hydra.run.dir=outputs/mine) or leave it unset (outputs/<task>/runs/...)"
)


def entry(config_name: str, task: Task | str) -> Callable[[], Any]:
    """The console script / `python -m` function of an entry point whose work is `task(cfg)`;
    `task` may be a "module:function" reference, imported only when the task runs."""

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)
    def main(cfg: DictConfig) -> Any:
        release_stderr()  # Hydra composed the config: from here on, everything shows as it comes
        with user_errors_reported():
            _check_run_dir()
            stop_on_sigterm(f"python -m stn.{cfg.get('task_name', 'train')}")
            check_torch_pair()
            lightning_lines_once()
            return _task(task)(cfg)

    def cli() -> Any:
        from stn.runs.folders import run_dir_refusal

        for key, _, value in (arg.partition("=") for arg in sys.argv[1:]):
            key, value = key.lstrip("+"), value.strip().strip("'\"").strip()
            if key == "hydra.run.dir" and not value:
                raise SystemExit(f"error: {EMPTY_RUN_DIR}")  # before Hydra writes its record there
            if key in ("hydra.run.dir", "hydra.sweep.dir") and (refusal := run_dir_refusal(key, value)):
                raise SystemExit(refusal)  # before Hydra's own mkdir fails with a traceback
        from stn.environment import set_up

        set_up()  # the resolvers and filters, before Hydra composes
        hold_stderr()
        try:
            return main()
        except SystemExit as exit:
            # Hydra refused the command line: a failure status, before the task or sweep began (a
            # string status is a sentence of the project's own, shown as it is)
            refused = stderr_held() and exit.code not in (0, None) and not isinstance(exit.code, str)
            held = release_stderr(show=not refused)
            if not refused:
                raise
            from stn.sweeps.checks import refused_command_line  # only once Hydra has refused

            sentence = refused_command_line(CONF_DIR, config_name, sys.argv[1:])
            print(f"{sentence}" if sentence else held, file=sys.stderr, end="\n" if sentence else "")
            raise SystemExit(1) from None
        finally:
            release_stderr()

    cli.__doc__ = f"The command over conf/{config_name} (python -m and the console script)."
    return cli


def _check_run_dir() -> None:
    """A single run's folder is named: `hydra.run.dir=` (empty) would write the run into the
    folder the command was started from (the repository, a home folder)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.RUN and not str(hydra_cfg.run.dir or "").strip():
        raise ConfigError(EMPTY_RUN_DIR)


# what loading a library says when the process may not have more memory (a SLURM job's limit, ulimit -v)
OUT_OF_MEMORY = ("cannot allocate memory", "failed to map segment", "out of memory", "memoryerror")


def check_torch_pair() -> None:
    """torch and torchvision are a matching pair: a torchvision built for another torch fails at its
    first import with a long traceback (`operator torchvision::nms does not exist`); one sentence."""
    try:
        import torchvision  # noqa: F401
    except (RuntimeError, ImportError, AttributeError, MemoryError, OSError) as error:
        from importlib.metadata import PackageNotFoundError, version

        def installed(package: str) -> str:
            try:
                return version(package)
            except PackageNotFoundError:
                return "none"

        first = first_line(error)
        pair = f"torchvision {installed('torchvision')} cannot be imported beside torch {installed('torch')}"
        if any(sign in first.lower() for sign in OUT_OF_MEMORY):
            raise ConfigError(
                f"{pair} ({first[:160]}): the process ran out of memory while loading them (a job's memory "
                "limit too low: hydra.launcher.mem_gb on SLURM), not a mismatch"
            ) from None
        raise ConfigError(
            f"{pair} ({first[:160]}): they are not a matching pair; install one, e.g. "
            "pip install torch==2.14.1 torchvision==0.29.1 (README, Set up)"
        ) from None
