"""Which checkpoint a run resumes from, and in which folder it goes on.

- `ckpt_path=<file>`: that checkpoint; this run's folder (a new run that starts from it).
- `ckpt_path=last`: this run's own `checkpoints/last.ckpt` if it has one, else the newest
  earlier run of the same command (the same overrides, ckpt_path aside) under `paths.log_dir`
  that has one. The run goes on in *that* folder, so its checkpoints, TensorBoard events, log and
  metrics stay together and ModelCheckpoint keeps tracking the best ones it already saved.
- `ckpt_path=null`: a folder that already holds `checkpoints/last.ckpt` (a SLURM job requeued
  after pre-emption, a run started again with the same `hydra.run.dir`) resumes from it.

A folder's run is continued only if it is the same run: its config (kept in `run_config/`, a copy
of its first `.hydra/`, since Hydra rewrites `.hydra/` at every start) matches this
command's, it has not finished, and its last checkpoint can be read. Otherwise one sentence says
why and what to do, and the folder's record is left as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stn.errors import ConfigError, UserError
from stn.runs.folders import check_writable, record_run_config, remove_if_unused, restore_run_config
from stn.runs.reading import (
    LAST_CHECKPOINT,
    RUN_CONFIG,
    RunFolder,
    flatten,
    run_folders,
    saved_config,
    split_override,
)
from stn.utils.checkpoints import read_checkpoint
from stn.utils.files import check_regular

log = logging.getLogger(__name__)

LAST = "last"
# Keys that may differ between a run and its continuation: where it runs and on what (paths, data
# folder, threads, devices, Hydra's own node) and the command line that started it (the HParams
# tab's copy), never what it trains. Every other key must be equal, so a new key is compared by
# default: add it here only if it says where or how fast a run goes, not what it learns
# (tests/test_resume.py: test_only_where_and_how_fast_a_run_goes_may_differ_on_resume).
MAY_DIFFER = (
    "ckpt_path",
    "paths.",
    "data.data_dir",
    "num_threads",
    "trainer.devices",
    "hydra.",
    "callbacks.hparams.overrides",
    "callbacks.hparams.run_dir",  # the HParams tab's name for the run: its folder
)


def _without_ckpt_path(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if split_override(o)[0] != "ckpt_path")


def earlier_runs(log_dir: Path, overrides: list[str], exclude: Path) -> list[Path]:
    """Run folders under `log_dir` made by the same overrides (ckpt_path aside) that have a
    last checkpoint, newest first."""
    wanted = _without_ckpt_path(overrides)
    found = [
        run.path
        for run in run_folders(log_dir)
        if run.path.resolve() != exclude.resolve()
        and run.last_checkpoint.is_file()
        and _without_ckpt_path(run.overrides) == wanted
    ]
    return sorted(found, key=lambda folder: (folder / LAST_CHECKPOINT).stat().st_mtime, reverse=True)


def resume_point(
    ckpt_path: str | None, output_dir: Path, log_dir: Path, overrides: list[str]
) -> tuple[str | None, Path]:
    """(the checkpoint to resume from or None, the folder this run writes to). A `last.ckpt` that
    is there but not a regular file (a FIFO, a link to a device) is refused: never taken for
    missing, which would resume another run of the same command instead."""
    own_last = output_dir / LAST_CHECKPOINT
    if own_last.exists() or own_last.is_symlink():
        check_regular(own_last)
    if ckpt_path is None:
        if own_last.is_file():
            log.info("This run's folder already has %s: resuming from it", own_last)
            return str(own_last), output_dir
        return None, output_dir
    if ckpt_path == LAST:
        if own_last.is_file():
            return str(own_last), output_dir
        runs = earlier_runs(log_dir, overrides, exclude=output_dir)
        if not runs:
            raise ConfigError(
                f"ckpt_path=last: no earlier run of this command (overrides {_without_ckpt_path(overrides)}) "
                f"with {LAST_CHECKPOINT} under {log_dir}"
            )
        log.info("Resuming %s; the run goes on in %s", runs[0] / LAST_CHECKPOINT, runs[0])
        return str(runs[0] / LAST_CHECKPOINT), runs[0]
    if not (Path(ckpt_path).exists() or Path(ckpt_path).is_symlink()):
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist (a checkpoint file, 'last', or null)")
    check_regular(Path(ckpt_path))
    return ckpt_path, output_dir


def config_differences(saved: DictConfig, current: DictConfig) -> list[str]:
    """The keys whose values differ between two resolved configs, where the run is aside."""
    old = flatten(OmegaConf.to_container(saved, resolve=True))
    new = flatten(OmegaConf.to_container(current, resolve=True))
    keys = sorted(set(old) | set(new))
    return [key for key in keys if not key.startswith(MAY_DIFFER) and old.get(key) != new.get(key)]


def _check_same_run(folder: Path, cfg: DictConfig, restore: bool) -> None:
    """The folder's run is this command's run, unfinished: else ConfigError saying what to do (and,
    with `restore`, Hydra's record of the folder's run put back in `.hydra/`)."""
    record = folder / RUN_CONFIG
    if (record / "config.yaml").is_file():
        # where the run writes may differ: compare what it trains, with this run's paths in both
        paths = OmegaConf.to_container(cfg.paths, resolve=True)
        saved = saved_config(record.parent, record.name, paths=paths)
        differences = config_differences(saved, cfg)
        if differences:
            shown = ", ".join(
                f"{key} ({OmegaConf.select(saved, key, default=None)!r} -> "
                f"{OmegaConf.select(cfg, key, default=None)!r})"
                for key in differences[:5]
            )
            more = f" and {len(differences) - 5} more" if len(differences) > 5 else ""
            if restore:  # Hydra rewrote .hydra/ for this start in that folder
                restore_run_config(folder)
            raise ConfigError(
                f"{folder} holds another run: its config differs in {shown}{more}. Give this run "
                "its own folder (leave hydra.run.dir unset), or repeat that run's command to resume it"
            )
    if (folder / "metrics.json").is_file():
        if restore:
            restore_run_config(folder)
        raise ConfigError(
            f"{folder} holds a finished run (metrics.json); resuming would overwrite its record. Start a "
            "new run (without ckpt_path), or start one from it with ckpt_path=<its checkpoint>"
        )


def _check_readable(checkpoint: Path) -> dict:
    try:
        return read_checkpoint(checkpoint)
    except UserError as error:
        earlier = sorted(checkpoint.parent.glob("epoch_*.ckpt"))
        way_on = f"ckpt_path={earlier[-1]} (the best epoch)" if earlier else "a new run folder"
        raise ConfigError(
            f"{error}, so the run cannot resume from it. Go on from "
            f"{way_on}, or delete {checkpoint.name} to start this folder's run afresh"
        ) from None


def _move_log(stub: Path, folder: Path) -> None:
    """Log into `folder`'s own log from now on, and remove `stub`, the folder made for this start,
    if this process created it and it holds nothing but Hydra's record and the log
    (`remove_if_unused`): a resumed run is one folder, not one per start. A folder the user named
    (hydra.run.dir=...) is the user's, and is left as it is."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        filename = getattr(handler, "baseFilename", None)
        if filename and Path(filename).parent == stub:
            root.removeHandler(handler)
            handler.close()
            moved = logging.FileHandler(folder / Path(filename).name, mode="a", delay=True)
            moved.setFormatter(handler.formatter)
            moved.setLevel(handler.level)
            root.addHandler(moved)
    remove_if_unused(stub)


def finished_here(cfg: DictConfig) -> dict | None:
    """The metrics of the run this command already finished in its own folder (a sweep re-run into
    the same folder, a job requeued after it finished): the same config and a metrics.json. Then
    there is nothing to do. None otherwise, and always when a checkpoint was named."""
    folder = Path(cfg.paths.output_dir)
    record = folder / RUN_CONFIG
    if cfg.get("ckpt_path") is not None or not (folder / "metrics.json").is_file():
        return None
    if not (record / "config.yaml").is_file():
        return None
    paths = OmegaConf.to_container(cfg.paths, resolve=True)
    if config_differences(saved_config(folder, RUN_CONFIG.name, paths=paths), cfg):
        return None
    restore_run_config(folder)  # Hydra rewrote .hydra/ for this start
    metrics = RunFolder(folder).metrics
    log.info("%s already holds this run, finished (metrics.json): nothing to do", folder)
    return metrics


def apply_resume_point(cfg: DictConfig, overrides: list[str]) -> str | None:
    """Resolve `cfg.ckpt_path`; point `paths.output_dir` at the folder the run goes on in; check
    that it is the same run and that its checkpoint can be read."""
    output_dir = Path(cfg.paths.output_dir)
    checkpoint, folder = resume_point(cfg.get("ckpt_path"), output_dir, Path(cfg.paths.log_dir), overrides)
    check_writable(folder / LAST_CHECKPOINT.parent)
    if checkpoint is None or Path(checkpoint).parent != folder / LAST_CHECKPOINT.parent:
        if checkpoint is not None:  # a new run that starts from a given checkpoint: readable, safely
            read_checkpoint(Path(checkpoint))
        record_run_config(output_dir)
        return checkpoint
    if folder != output_dir:
        cfg.paths.output_dir = str(folder)
        _move_log(output_dir, folder)
    _check_same_run(folder, cfg, restore=folder == output_dir)
    state = _check_readable(Path(checkpoint))
    epoch = state.get("epoch")
    if isinstance(epoch, int):  # the checkpoint of an epoch's end: the run goes on with the next one
        log.info(
            "Resumed from %s, written after epoch %d: training goes on with epoch %d",
            checkpoint,
            epoch,
            epoch + 1,
        )
    return checkpoint
