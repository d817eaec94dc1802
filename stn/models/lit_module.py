"""The LightningModule: loss, accuracy metrics and optimisation around an STN (or plain CNN) classifier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from stn.models.classifier import STNClassifier
from stn.models.transformer import SpatialTransformer

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class STNLitModule(L.LightningModule):
    """Trains `classifier`, with a spatial transformer in front of it when `localization` is given.

    `optimizer` and `scheduler` are factories (Hydra partials) that get the parameter groups and
    the optimizer. The localization net is its own parameter group with its learning rate scaled
    by `localization_lr_scale`: a smaller step keeps theta from jumping early in training.
    """

    def __init__(
        self,
        classifier: nn.Module,
        optimizer: OptimizerFactory,
        localization: nn.Module | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        localization_lr_scale: float = 1.0,
        align_corners: bool = False,
        pad_with_background: bool = True,
        input_mean: float = 0.0,
        input_std: float = 1.0,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        # modules and factories stay out of the checkpoint's hparams so it loads with weights_only;
        # the full config is in the run folder (.hydra/config.yaml) and the logger's hparams
        self.save_hyperparameters(
            logger=False, ignore=["classifier", "localization", "optimizer", "scheduler"]
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        transformer = None
        if localization is not None:
            # raw background 0 after normalisation; see SpatialTransformer
            fill_value = -input_mean / input_std if pad_with_background else 0.0
            transformer = SpatialTransformer(localization, align_corners, fill_value)
        self.net = STNClassifier(classifier, transformer)

        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def on_train_start(self) -> None:
        # the sanity check's validation must not count towards the best accuracy
        self.val_acc.reset()
        self.val_loss.reset()
        self.val_acc_best.reset()

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], loss_metric: MeanMetric, acc: MulticlassAccuracy
    ) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        loss_metric(loss)
        acc(logits, labels)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_loss, self.train_acc)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self.val_loss, self.val_acc)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self.test_loss, self.test_acc)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The classifier's parameters, and the localization net's as a group of its own."""
        groups = [{"params": list(self.net.classifier.parameters()), "name": "classifier"}]
        if self.net.transformer is not None:
            groups.append({"params": list(self.net.transformer.parameters()), "name": "localization"})
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        for group in optimizer.param_groups:
            if group.get("name") == "localization":
                group["lr"] *= self.hparams.localization_lr_scale
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }
