"""A sweep's trial reports to its Optuna study after every validation, and stops when the study's
pruner says so (stn/sweeps/pruning.py). Unlike optuna-integration's callback, which raises from
inside the validation loop, it lets the epoch end: its checkpoints and CSV rows are written, and
the run ends as a finished one does, untested."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class StudyPruning(L.Callback):
    """Report `monitor` to `trial` after each validation epoch; stop training once it should prune."""

    def __init__(self, trial: Any, monitor: str) -> None:
        super().__init__()
        self.trial, self.monitor = trial, monitor
        self.pruned_at: tuple[int, float] | None = None  # (epoch, value) once pruned

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = (epoch, float(value))
            trainer.should_stop = True
