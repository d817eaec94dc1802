"""Which checkpoint a run resumes from, and in which folder it goes on.

- `ckpt_path=<file>`: that checkpoint; this run's folder.
- `ckpt_path=last`: this run's own `checkpoints/last.ckpt` if it has one, else the newest
  earlier run of the same command (the same overrides, ckpt_path aside) under `paths.log_dir`
  that has one. The run goes on in *that* folder, so its checkpoints, TensorBoard events and
  metrics stay together and ModelCheckpoint keeps tracking the best ones it already saved.
- `ckpt_path=null`: a folder that already holds `checkpoints/last.ckpt` (a SLURM job requeued
  after pre-emption, a run started again with the same `hydra.run.dir`) resumes from it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from stn.errors import ConfigError
from stn.utils.runs import LAST_CHECKPOINT, run_folders, split_override

log = logging.getLogger(__name__)

LAST = "last"


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
    """(the checkpoint to resume from or None, the folder this run writes to)."""
    own_last = output_dir / LAST_CHECKPOINT
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
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist (a checkpoint file, 'last', or null)")
    return ckpt_path, output_dir


def apply_resume_point(cfg: DictConfig, overrides: list[str]) -> str | None:
    """Resolve `cfg.ckpt_path`; point `paths.output_dir` at the folder the run goes on in."""
    output_dir = Path(cfg.paths.output_dir)
    checkpoint, folder = resume_point(cfg.get("ckpt_path"), output_dir, Path(cfg.paths.log_dir), overrides)
    if folder != output_dir:
        cfg.paths.output_dir = str(folder)
    return checkpoint
