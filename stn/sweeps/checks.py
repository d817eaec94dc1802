"""Checks on a command line before anything runs. A sweep, before any of its jobs start: its
sweeper and launcher are installed (the `sweeps` extra), every swept key exists (else the nearest
valid ones are named) and every search space is non-empty; Hydra would otherwise fail each job on
its own, or hand Optuna an interval it cannot sample, after the sweep has begun. A single run: a
misspelled key gets the same "did you mean"."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from stn.errors import ConfigError, check_value, integers, is_int, release_stderr
from stn.runs.folders import leave_fixed_keys_out_of_job_names

log = logging.getLogger(__name__)

_ABSENT = object()


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config, nodes and leaves (`model`, `model.optimizer`, `model.optimizer.lr`)."""
    keys = []
    if isinstance(cfg, DictConfig):
        for name in cfg.keys():
            key = f"{prefix}{name}"
            keys.append(key)
            value = cfg._get_node(name)
            if isinstance(value, (DictConfig, ListConfig)) and not value._is_none():
                keys.extend(config_keys(value, key + "."))
    return keys


def nearest_keys(key: str, cfg: DictConfig, count: int = 3) -> list[str]:
    """The valid keys closest to `key`: first by the whole dotted path, then by the last part among
    the siblings of the deepest parent that exists."""
    candidates = [k for k in config_keys(cfg) if k.startswith("hydra.") == key.startswith("hydra.")]
    close = difflib.get_close_matches(key, candidates, n=count, cutoff=0.6)
    parent, _, leaf = key.rpartition(".")
    while parent and OmegaConf.select(cfg, parent, default=_ABSENT) is _ABSENT:
        parent, _, _ = parent.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        siblings = [str(name) for name in node.keys()]
        for name in difflib.get_close_matches(leaf, siblings, n=count, cutoff=0.5):
            full = f"{parent}.{name}" if parent else name
            if full not in close:
                close.append(full)
    return close[:count]


def _is_group(override: Override, cfg: DictConfig) -> bool:
    """`model=cnn`, `model/optimizer=adam`: a config group choice, not a key."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}
    return override.key_or_group in choices or "/" in override.key_or_group


def check_key_exists(override: Override, cfg: DictConfig) -> None:
    if override.is_add() or override.is_force_add() or _is_group(override, cfg):
        return
    key = override.key_or_group
    if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
        nearest = nearest_keys(key, cfg)
        hint = f"; did you mean {' or '.join(nearest)}?" if nearest else ""
        raise ConfigError(f"the sweep sets {key}, which is not a key of this config{hint}")


def check_space(key: str, space: Any) -> None:
    """A sweep's values for `key` must be a non-empty set."""
    if isinstance(space, IntervalSweep):
        if not space.start < space.end:
            raise ConfigError(
                f"the search space of {key}, interval({space.start}, {space.end}), is empty: "
                "the start must be < the end"
            )
        if "log" in space.tags and space.start <= 0:
            raise ConfigError(f"the log-scale search space of {key} must be > 0, got start={space.start}")
    elif isinstance(space, RangeSweep):
        start, stop, step = space.start, space.stop, space.step
        if step == 0 or (step > 0 and start >= stop) or (step < 0 and start <= stop):
            raise ConfigError(f"the search space of {key}, range({start}, {stop}, {step}), is empty")
    elif isinstance(space, ChoiceSweep) and not space.list:
        raise ConfigError(f"the search space of {key}, choice(), is empty")


def sweep_overrides(cfg: DictConfig) -> list[Override]:
    """The command line's overrides and the Optuna sweeper's `params`, parsed as Hydra does."""
    parser = OverridesParser.create()
    overrides = parser.parse_overrides(list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or []))
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    overrides += parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
    return overrides


def check_sweep(cfg: DictConfig) -> None:
    """Raise ConfigError for the first swept key that does not exist or has an empty space."""
    for override in sweep_overrides(cfg):
        check_key_exists(override, cfg)
        if override.is_sweep_override():
            check_space(override.key_or_group, override.value())
            current = OmegaConf.select(cfg, override.key_or_group, default=None, throw_on_missing=False)
            space = override.value()
            # interval(1, 3) over a key that holds an integer (a depth, a size): Optuna would draw
            # reals; interval(1e-6, 1e-3) over a weight decay written as 0 is a real search
            integer_bounds = isinstance(space, IntervalSweep) and all(
                float(bound).is_integer() for bound in (space.start, space.end)
            )
            if integer_bounds and is_int(current):
                raise ConfigError(
                    f"the sweep searches {override.key_or_group}, an integer key, over an interval of reals; "
                    f"use range(a, b) or choice(...) for it"
                )


SLURM_LAUNCHER = "hydra_plugins.stn_slurm_launcher.stn_slurm_launcher.StnSlurmLauncher"
# what each sweep plugin imports, all from the `sweeps` extra
SWEEP_PACKAGES = {
    "hydra_plugins.stn_optuna_sweeper.": ("hydra.sweeper", "optuna"),
    "hydra_plugins.hydra_joblib_launcher.": ("hydra.launcher", "hydra_plugins.hydra_joblib_launcher"),
    "hydra_plugins.hydra_submitit_launcher.": ("hydra.launcher", "hydra_plugins.hydra_submitit_launcher"),
    "hydra_plugins.stn_slurm_launcher.": ("hydra.launcher", "hydra_plugins.hydra_submitit_launcher"),
}


def check_sweep_packages(cfg: DictConfig) -> None:
    """The sweeper and launcher a multirun asks for are installed (the `sweeps` extra), else one
    sentence that says how to install them, not Hydra's "Unknown plugin class"."""
    import importlib.util

    for prefix, (key, package) in SWEEP_PACKAGES.items():
        target = str(OmegaConf.select(cfg, f"{key}._target_", default="") or "")
        if target.startswith(prefix) and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"{key} is {target.split('.')[-1]}, which needs the sweeps extra "
                f'({package} is not installed): pip install -e ".[sweeps]"'
            )


def _sinfo(*fields: str) -> list[list[str]]:
    """`sinfo`'s rows (one per partition and node state) with `fields`; ConfigError in one
    sentence when SLURM is not installed or its controller does not answer."""
    import shutil
    import subprocess

    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        raise ConfigError(
            "hydra/launcher=slurm submits with SLURM's sbatch, which this machine does not have; run the "
            "sweep on a cluster's login node, or try it here with make slurm-up"
        )
    try:
        answer = subprocess.run(
            ["sinfo", "-h", "-o", "|".join(fields)], capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        answer = None
    if answer is None or answer.returncode != 0:
        why = (answer.stderr.strip().splitlines() or ["no answer"])[-1] if answer else "no answer in 20 s"
        raise ConfigError(f"the SLURM cluster does not answer (sinfo: {why}); is it up? (make slurm-up here)")
    return [line.split("|") for line in answer.stdout.splitlines() if line.strip()]


UNUSABLE_NODE_STATES = ("down", "drain", "drng", "fail", "maint", "unk", "npc", "inval", "futr", "boot")


def check_slurm(cfg: DictConfig) -> None:
    """Before a SLURM sweep submits anything, what the cluster can be asked: it answers, the
    partition exists and is up, a node of it is usable (not down, drained or failed) and has the
    CPUs, memory and GPUs a job asks for, and the time limit is a time. Else sbatch refuses each
    job with submitit's traceback, or the jobs wait in the queue forever with no word."""
    launcher = OmegaConf.select(cfg, "hydra.launcher", default=None)
    if launcher is None or launcher.get("_target_") != SLURM_LAUNCHER:
        return
    timeout = launcher.get("timeout_min")
    if timeout is not None:
        check_value("hydra.launcher.timeout_min", timeout, integers(1))
    # one row per partition and group of nodes in one state
    fields = ("partition", "avail", "cpus", "memory", "gres", "state", "reason", "nodes")
    rows = [
        dict(zip(fields, row, strict=False)) for row in _sinfo("%R", "%a", "%c", "%m", "%G", "%t", "%E", "%N")
    ]
    partitions = sorted({row["partition"] for row in rows})
    partition = launcher.get("partition")
    if partition is not None and str(partition) not in partitions:
        raise ConfigError(
            f"hydra.launcher.partition={partition} is not a partition of this SLURM cluster; "
            f"allowed: {' | '.join(partitions)}"
        )
    named = str(partition) if partition is not None else None
    mine = [row for row in rows if named is None or row["partition"] == named]
    where = f"partition {named}" if named else "this cluster"
    if mine and all(row["avail"].lower() != "up" for row in mine):
        raise ConfigError(
            f"{where} is {mine[0]['avail']} (not accepting jobs): the sweep's jobs would wait in the queue "
            "forever; choose another hydra.launcher.partition, or ask its admins to set it up"
        )
    usable = [row for row in mine if not row["state"].rstrip("*~#!%$@^-").startswith(UNUSABLE_NODE_STATES)]
    if not usable:
        states = "; ".join(
            f"{row['nodes']} is {row['state']} ({row['reason'] or 'no reason given'})" for row in mine
        )
        raise ConfigError(
            f"no node of {where} can run a job now: {states}; its jobs would wait in the queue forever "
            "(scontrol update nodename=<node> state=resume, on a cluster of yours)"
        )
    cpus = int(launcher.get("cpus_per_task") or 1) * int(launcher.get("tasks_per_node") or 1)
    most_cpus = max(int(row["cpus"].rstrip("+")) for row in usable)
    if cpus > most_cpus:
        raise ConfigError(
            f"a job asks for {cpus} CPUs (hydra.launcher.cpus_per_task x tasks_per_node), but the nodes of "
            f"{where} have {most_cpus}; lower num_threads (cpus_per_task follows it)"
        )
    memory_mb = int(float(launcher.get("mem_gb") or 0) * 1024)
    most_memory = max(int(row["memory"].rstrip("+")) for row in usable)
    if memory_mb > most_memory:
        raise ConfigError(
            f"a job asks for {memory_mb:,} MB (hydra.launcher.mem_gb={launcher.get('mem_gb')}), but the "
            f"nodes of {where} have {most_memory:,} MB; lower hydra.launcher.mem_gb"
        )
    gpus = int(launcher.get("gpus_per_task") or 0) + int(launcher.get("gpus_per_node") or 0)
    if gpus and not any("gpu" in row["gres"] for row in usable):
        raise ConfigError(
            f"a job asks for GPUs (hydra.launcher.gpus_per_task / gpus_per_node, trainer.accelerator), but "
            f"the nodes of {where} have none (gres: {usable[0]['gres']}); train on CPUs there "
            "(trainer.accelerator=cpu) or choose a GPU partition"
        )


class SweepChecks(Callback):
    """At the start of a multirun (conf/hydra/default.yaml): runs `check_sweep` once, and makes
    SIGTERM stop the sweep's job processes with it (stn/sweeps/job_share.py)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        release_stderr()  # Hydra composed the sweep: its own messages show as they come from here
        try:
            check_sweep_packages(config)
            check_sweep(config)
            check_slurm(config)
        except ConfigError as error:
            # a sentence, not a traceback from inside Hydra
            raise SystemExit(f"error: {error}") from None
        leave_fixed_keys_out_of_job_names(config)
        from stn.sweeps.job_share import stop_workers_on_sigterm

        stop_workers_on_sigterm()


def _group_option_refused(override: Override, config_dir: Path) -> str | None:
    """The sentence for a config group option that does not exist (`model=stnn`), or None."""
    group = override.key_or_group.lstrip("+~")
    folder = config_dir / group
    if not folder.is_dir() or override.is_sweep_override() or override.is_delete():
        return None
    choice = str(override.value())
    if choice in ("null", "None") or (folder / f"{choice}.yaml").is_file():
        return None
    options = sorted(path.stem for path in folder.glob("*.yaml"))
    close = difflib.get_close_matches(choice, options, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"error: {group}={choice} is not an option of the {group} group; {hint}allowed: {' | '.join(options)}"
    )


def refused_command_line(config_dir: Path, config_name: str, args: list[str]) -> str | None:
    """Once Hydra has refused a command line: one sentence for a group option that does not exist
    or a key the config does not have, with the nearest valid names; None when the refusal is
    something else (Hydra's own message then stands)."""
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if "=" in a])
    except Exception:  # a syntax error: Hydra says where
        return None
    for override in overrides:
        sentence = _group_option_refused(override, config_dir)
        if sentence:
            return sentence
    task = [o for o in overrides if not o.key_or_group.startswith("hydra")]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        try:  # the groups alone, to learn the keys this command's config has
            groups = [o.input_line for o in task if "." not in o.key_or_group and "=" in o.input_line]
            cfg = compose(config_name, overrides=groups, return_hydra_config=True)
        except Exception:
            return None
    sweeps = "the sweep sets" if any(o.is_sweep_override() for o in task) else "the command line sets"
    for override in task:
        try:
            check_key_exists(override, cfg)
        except ConfigError as error:
            return f"error: {str(error).replace('the sweep sets', sweeps)}"
    return None
