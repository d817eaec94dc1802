"""The loggers' two changes to Lightning's: a CSV logger that keeps a resumed run's earlier rows, and
a TensorBoard logger without the `epoch` scalar; and `logged_metrics`, what a run's metrics.json
holds, read the one way train and eval read it.

Lightning's CSVLogger deletes `metrics.csv` when it starts in a folder that has one, so a resumed
run's table would begin at the resumed epoch. This one keeps the earlier rows, up to the first step
the resumed run logs again: the table reads as if the run had never stopped.
"""

from __future__ import annotations

import csv
import os

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _HistoryWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Read the rows an earlier start wrote (Lightning's writer deletes them here)."""
        self.earlier: list[dict[str, str]] = []
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                self.earlier = list(reader)
                self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        if self.earlier and self.metrics:
            # the resumed run logs again from its checkpoint's step: earlier rows from there on
            # were logged by work that is now done again
            first = min(int(row["step"]) for row in self.metrics)
            kept = [row for row in self.earlier if _step(row) < first]
            partial = f"{self.metrics_file_path}.partial"
            with self._fs.open(partial, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(partial, self.metrics_file_path)
            self.earlier = []
        super().save()


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class HistoryCSVLogger(CSVLogger):
    """Lightning's CSVLogger, keeping a resumed run's earlier rows (module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _HistoryWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment


class EpochlessTensorBoardLogger(TensorBoardLogger):
    """TensorBoard without the `epoch` scalar Lightning adds to every write: as a card it sorts
    first in the Scalars tab and says nothing (the step axis is the run's step; the epoch is in
    the CSV and in each image's title)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics({name: value for name, value in metrics.items() if name != "epoch"}, step)


def logged_metrics(trainer: L.Trainer) -> dict[str, float]:
    """Every metric the last fit or test logged (`trainer.callback_metrics`), as plain floats."""
    return {name: float(value) for name, value in trainer.callback_metrics.items()}
