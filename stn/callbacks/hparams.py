"""TensorBoard's HParams tab for a run: its hyperparameters as columns, its final metrics as values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams

from stn.runs.reading import flatten, split_override


def override_values(overrides: Sequence[str], groups: Sequence[str]) -> dict[str, Any]:
    """`key=value` command-line overrides as {key: value} (YAML-typed), leaving out Hydra's own
    keys and config group choices (`model=cnn`), which the choices show."""
    values = {}
    for override in overrides:
        key, value = split_override(override)
        if not key or key.startswith("hydra") or key in groups or "/" in key:
            continue
        try:
            values[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            values[key] = value
    return {key: value for key, value in values.items() if isinstance(value, (bool, int, float, str))}


class HParamsLogger(L.Callback):
    """Writes the run's hyperparameters when fitting starts, naming `metrics` as the tab's metric
    columns (without a value: a metric appears once it has one, never as a placeholder 0), then
    the metrics' final values as `hp/<metric>` scalars after fitting and after testing.

    The columns: the choices of the config `groups` (e.g. data and model; `choices` holds every
    group's), `hparams` (a nested mapping, flattened to dotted keys) and every key the command line
    set (`overrides`), so a sweep's parameters are columns whatever it sweeps. The first column is
    `run`, the name of the run's folder (`run_dir`): TensorBoard's own trial column is the run's
    path under the log dir, which begins `train/multiruns/<date>_<time>/` on every row of a sweep."""

    def __init__(
        self,
        choices: Mapping[str, Any] | None = None,
        groups: Sequence[str] = ("data", "model"),
        hparams: Mapping[str, Any] | None = None,
        overrides: Sequence[str] = (),
        metrics: Sequence[str] = ("val/acc_best", "test/acc"),
        run_dir: str | None = None,
    ) -> None:
        choices = dict(choices or {})
        shown = {group: choices[group] for group in groups if choices.get(group) is not None}
        usual = {key: value for key, value in flatten(hparams or {}).items() if value is not None}
        # the keys the command line set come first (a sweep's parameters among them): TensorBoard's
        # tab shows its columns in this order, and the choices and the config's usual keys follow
        self.hparams = {"run": Path(run_dir).name} if run_dir else {}
        self.hparams |= override_values(overrides, list(choices))
        for key, value in (shown | usual).items():
            self.hparams.setdefault(key, value)
        self.metrics = list(metrics)

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # the tab's session: its hyperparameters and the names of its metric columns.
                # Lightning's log_hyperparams would also log each metric's placeholder value as a
                # scalar at step 0, which the tab then shows for a run that has not finished
                names = {f"hp/{name}": 0.0 for name in self.metrics}  # only the names are written
                writer = logger.experiment._get_file_writer()
                for summary in hparams(self.hparams, names):
                    writer.add_summary(summary)
            else:
                logger.log_hyperparams(self.hparams)

    def _log_final(self, trainer: L.Trainer) -> None:
        final = {
            f"hp/{name}": float(trainer.callback_metrics[name])
            for name in self.metrics
            if name in trainer.callback_metrics
        }
        if final and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(final, step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_final(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_final(trainer)
