"""One warning line for a run that learns nothing: its weights, and so its loss, do not move.

A learning rate far too small (`model.optimizer.lr=1e-30`), frozen parameters or gradients that
never arrive all train without an error and end at chance; this says so after the first epoch
rather than after the last. The weights are compared, not the loss, since dropout makes the loss
of a network that learns nothing move from batch to batch.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

log = logging.getLogger(__name__)


class StalledLossWarning(L.Callback):
    """Warns once when an epoch changes the trainable weights by less than `tolerance`, relative
    to their norm. A copy of the weights per epoch; one host read at its end, nothing per step."""

    def __init__(self, tolerance: float = 1e-7) -> None:
        self.tolerance = tolerance
        self.start: torch.Tensor | None = None
        self.warned = False

    @staticmethod
    def _weights(pl_module: L.LightningModule) -> torch.Tensor:
        return torch.cat([p.detach().flatten().float() for p in pl_module.parameters() if p.requires_grad])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.warned:
            self.start = self._weights(pl_module).clone()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.warned or self.start is None:
            return
        change = float((self._weights(pl_module) - self.start).norm() / self.start.norm().clamp_min(1e-12))
        self.start = None
        if change <= self.tolerance:
            self.warned = True
            group = trainer.optimizers[0].param_groups[0] if trainer.optimizers else {}
            lr = group.get("initial_lr", group.get("lr"))  # as configured, before any schedule
            log.warning(
                "the model is not learning: epoch %d changed its weights by %.2g of their size, so its "
                "loss cannot move; the usual cause is a learning rate far too small "
                "(model.optimizer.lr=%s)",
                trainer.current_epoch, change, lr,
            )  # fmt: skip
