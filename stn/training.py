"""Training one run, what `python -m stn.train` runs (stn/train.py is its command line): check the
composed config, find where the run goes on (a resume), instantiate data, model, callbacks, loggers
and trainer, fit, test with the best checkpoint, write metrics.json, and return the metric a
sweeper optimises. `train(cfg)` is also what tests and notebooks call with a composed config.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from stn.errors import in_multirun

if TYPE_CHECKING:  # torch and Lightning are imported where a run starts: the command line answers first
    import lightning as L

    from stn.sweeps.pruning import PrunedTrial

log = logging.getLogger(__name__)


def fit_seconds(trainer: L.Trainer, this_start: float) -> float:
    """The run's whole training time: Lightning's Timer callback (conf/callbacks/timer.yaml) keeps it
    in the checkpoint, so a resumed run counts its earlier starts too; else this start's time."""
    from lightning.pytorch.callbacks import Timer

    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return timer.time_elapsed("train") if timer is not None else this_start


def stopped_runs_reported(trainer: L.Trainer, cfg: DictConfig, testing: bool = False) -> Any:
    """A run stopped by SIGTERM (a scheduler) or Ctrl-C, in any phase: one sentence that says it is
    incomplete and how to resume (stn/runs/stops.py)."""
    from stn.runs.stops import stops_reported

    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    def sentence(stopped: signal.Signals) -> str:
        when = "while it tested its best checkpoint" if testing else f"in epoch {trainer.current_epoch}"
        return (
            f"the run was stopped ({stopped.name}) {when} and is incomplete: no metrics.json. Resume it "
            f"from {last} with the same command and ckpt_path=last"
        )

    return stops_reported(sentence)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test as `cfg` says; returns every logged metric (and `best_model_path`) and writes
    them to the run folder's metrics.json."""
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.utilities import rank_zero_only

    from stn.runs.folders import run_lock
    from stn.runs.resume import apply_resume_point, finished_here
    from stn.sweeps.job_share import apply_job_share
    from stn.utils.checks import check_config

    check_config(cfg)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    apply_job_share(cfg, hydra_cfg)
    finished = finished_here(cfg)
    if finished is not None:
        return finished
    ckpt_path = apply_resume_point(cfg, list(hydra_cfg.overrides.task) if hydra_cfg else [])
    if rank_zero_only.rank != 0:  # DDP's other ranks train in rank 0's folder, under its lock
        return _fit_and_test(cfg, ckpt_path, hydra_cfg)
    with run_lock(Path(cfg.paths.output_dir)):  # one command trains in a folder at a time
        return _fit_and_test(cfg, ckpt_path, hydra_cfg)


def _fit_and_test(cfg: DictConfig, ckpt_path: str | None, hydra_cfg: DictConfig | None) -> dict[str, Any]:
    import lightning as L

    from stn.loggers import logged_metrics
    from stn.models import parameter_counts
    from stn.utils.config_tree import show_config
    from stn.utils.instantiators import build, build_model, instantiate_group

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    log.info("Run folder: %s%s", cfg.paths.output_dir, _choices_shown(hydra_cfg))
    datamodule = build(cfg, "data")
    model = build_model(cfg)
    log.info("Parameters: %s", parameter_counts(model.net))
    callbacks = instantiate_group(cfg.get("callbacks"))
    pruning = study_pruning(cfg, hydra_cfg)
    if pruning is not None:
        callbacks.append(pruning)
    trainer: L.Trainer = build(
        cfg, "trainer", callbacks=callbacks, logger=instantiate_group(cfg.get("logger"))
    )
    # once every value has been checked where it enters: a refused value is not read after the tree
    show_config(
        cfg, Path(cfg.paths.output_dir) / "config_tree.log", print_it=bool(cfg.get("print_config", True))
    )

    metrics: dict[str, Any] = {}
    if cfg.get("train", True):
        start = time.perf_counter()
        with stopped_runs_reported(trainer, cfg):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics["time/fit_seconds"] = fit_seconds(trainer, time.perf_counter() - start)
        metrics.update(logged_metrics(trainer))
    if pruning is not None and pruning.pruned_at is not None:
        epoch, value = pruning.pruned_at
        metrics["pruned"] = {"epoch": epoch, cfg.optimized_metric: value}
        log.info(
            "Pruned by the study '%s' after epoch %d: %s %.4f; not tested, its checkpoints are in %s",
            hydra_cfg.sweeper.study_name, epoch, cfg.optimized_metric, value, cfg.paths.output_dir,
        )  # fmt: skip
    elif cfg.get("test", True):
        metrics.update(_test_best(trainer, model, datamodule, cfg))
    if trainer.is_global_zero:  # DDP: the other ranks hold the same synced metrics
        _write_metrics(metrics, Path(cfg.paths.output_dir))
    return metrics


def _choices_shown(hydra_cfg: DictConfig | None) -> str:
    """` (data=..., model=..., ...)`: the run's group choices that say what it is."""
    choices = dict(hydra_cfg.runtime.choices) if hydra_cfg else {}
    shown = ", ".join(
        f"{group}={choices[group]}"
        for group in ("data", "model", "data_model", "training_step", "experiment")
        if choices.get(group) and choices[group] != "automatic"
    )
    return f" ({shown})" if shown else ""


def _test_best(trainer: L.Trainer, model: Any, datamodule: Any, cfg: DictConfig) -> dict[str, Any]:
    """Test the best checkpoint (the current weights where there is none); its metrics and path."""
    from stn.loggers import logged_metrics

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    if not best:  # expected under fast_dev_run (it writes no checkpoint); a surprise otherwise
        level = logging.INFO if trainer.fast_dev_run else logging.WARNING
        log.log(level, "No best checkpoint (fast_dev_run or no ModelCheckpoint): testing the current weights")
    with stopped_runs_reported(trainer, cfg, testing=True):
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
    return {**logged_metrics(trainer), "best_model_path": best}


def _write_metrics(metrics: dict[str, Any], output_dir: Path) -> None:
    """metrics.json (written whole), the final metrics in the log, and the run's last line."""
    from stn.utils.files import write_atomically

    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    log.info("Final metrics:\n%s", json.dumps(metrics, indent=2, sort_keys=True))
    if "pruned" not in metrics:
        finished = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("val/acc_best", "test/acc") if k in metrics)
        log.info(
            "Finished: %s; metrics.json and the checkpoints are in %s", finished or "no metrics", output_dir
        )


def study_pruning(cfg: DictConfig, hydra_cfg: DictConfig | None) -> L.Callback | None:
    """The callback that reports this run to its Optuna study and stops it when the study's pruner
    says so: only for a trial of a stored study (the sweeper sets `optuna_trial`)."""
    if cfg.get("optuna_trial") is None or hydra_cfg is None or not hydra_cfg.sweeper.get("storage"):
        return None
    from stn.callbacks.study_pruning import StudyPruning
    from stn.sweeps.pruning import build_pruner, trial_of

    sweeper = hydra_cfg.sweeper
    trial = trial_of(
        sweeper.storage, sweeper.study_name, int(cfg.optuna_trial), build_pruner(sweeper.get("pruner"))
    )
    return StudyPruning(trial, cfg.optimized_metric)


def train_task(cfg: DictConfig) -> float | PrunedTrial | None:
    """What `python -m stn.train` runs: train, and return the metric a sweeper optimises. A single
    run refused with one sentence leaves no folder behind (a sweep's job keeps its folder and log,
    where stn.summarize reads its error)."""
    from stn.runs.folders import remove_if_unused

    try:
        metrics = train(cfg)
    except Exception:
        if not in_multirun():
            remove_if_unused(Path(cfg.paths.output_dir))
        raise
    if "pruned" in metrics:  # the sweeper tells the study this trial was pruned
        from stn.sweeps.pruning import PrunedTrial

        pruned = metrics["pruned"]
        return PrunedTrial(pruned["epoch"], cfg.optimized_metric, pruned[cfg.optimized_metric])
    return metrics.get(cfg.get("optimized_metric"))
