"""The LightningModule: loss, accuracy metrics and optimisation around an STN (or plain CNN) classifier."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from stn.errors import TrainingDiverged, check, numbers, one_of
from stn.models.acceleration import (
    COMPILE_MODES,
    CUDA_GRAPH_MODES,
    compile_failure,
    compile_mode_for,
    to_channels_last,
)
from stn.models.classifier import STNClassifier
from stn.models.transformer import SpatialTransformer, WarpingTransformer

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
TransformerFactory = Callable[[nn.Module], WarpingTransformer]  # localization -> transformer
Batch = tuple[torch.Tensor, torch.Tensor]


class STNLitModule(L.LightningModule):
    """Trains `classifier`, with the spatial transformer `transformer(localization)` in front of it
    when `localization` is given (`model=cnn`: none).

    `optimizer` and `scheduler` are factories (Hydra partials) that get the parameter groups and
    the optimizer. The localization net (with the transformer's head) is its own parameter group,
    its learning rate scaled by `localization_lr_scale`: a smaller step keeps theta from jumping
    early in training.

    The training step never waits for the device: metrics accumulate on it, epoch metrics are
    logged once per epoch. Speed options: `channels_last` (NHWC weights and inputs: oneDNN's
    convolution kernels on a CPU) and `compile` (`torch.compile` of the network in place, in
    `configure_model`, so checkpoints keep their keys; a compiler that fails stops the run with one
    sentence). The CUDA-graphed training step is the subclass `GraphedSTNLitModule`
    (stn/models/graphed_module.py), which a config names (`training_step=graphed`).
    """

    def __init__(
        self,
        classifier: nn.Module,
        optimizer: OptimizerFactory,
        localization: nn.Module | None = None,
        transformer: TransformerFactory = SpatialTransformer,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        localization_lr_scale: float = 1.0,
        channels_last: bool = True,
        compile: bool = False,
        compile_mode: str = "default",
    ) -> None:
        super().__init__()
        check(self, one_of("epoch", "step"), scheduler_interval=scheduler_interval)
        check(self, numbers(0), localization_lr_scale=localization_lr_scale)
        # modules and factories stay out of the checkpoint's hparams so it loads with weights_only
        modules = ["classifier", "localization", "optimizer", "scheduler", "transformer"]
        self.save_hyperparameters(logger=False, ignore=modules)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        spatial_transformer = transformer(localization) if localization is not None else None
        self.net = STNClassifier(classifier, spatial_transformer)
        check(self, one_of(*COMPILE_MODES), compile_mode=compile_mode)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._compiled = False
        self._cuda_graphs = False  # compiled with CUDA graphs: each step marks its start
        self._modes_compiled: set[bool] = set()  # `training` values whose first compiled call worked

        # validate_args=False and nan_strategy="disable": the checks read tensors on the host,
        # which would stall the GPU every step; labels come from the datamodule and a NaN loss
        # still shows as a NaN epoch mean
        classes = classifier.num_classes
        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes=classes, average="micro", validate_args=False) for _ in range(3)
        )
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        self.val_acc_best = MaxMetric()

    def configure_model(self) -> None:
        if self.hparams.compile and not self._compiled:
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            # dynamic=False: a new batch size (an epoch's last, partial batch; validation) compiles
            # one more static graph; a dynamic batch dimension fails in affine_grid's backward
            mode = compile_mode_for(self.hparams.compile_mode, device)
            # a new model starts from empty compiler caches: code compiled for an earlier model in
            # this process (and its CUDA graph trees) must not serve this one with its weights
            torch._dynamo.reset()
            self.net.compile(mode=mode, dynamic=False)
            self._compiled = True
            self._cuda_graphs = mode in CUDA_GRAPH_MODES

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._cuda_graphs:  # a new step: the graphs may reuse the previous step's output memory
            torch.compiler.cudagraph_mark_step_begin()
        if self.hparams.channels_last:
            images = to_channels_last(images)
        if not self._compiled or self.training in self._modes_compiled:
            return self.net(images)
        try:  # the first call in each mode compiles: a compiler failure becomes one clear error
            logits = self.net(images)
        except Exception as error:  # dynamo and inductor raise many types
            raise compile_failure(error) from error
        self._modes_compiled.add(self.training)
        return logits

    def on_train_start(self) -> None:
        # the sanity check's validation must not count towards the best accuracy
        self.val_acc.reset()
        self.val_loss.reset()
        self.val_acc_best.reset()

    def _step(self, batch: Batch, loss_metric: MeanMetric, acc: MulticlassAccuracy) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        per_image = F.cross_entropy(logits, labels, reduction="none")  # (N,)
        # the epoch's loss is the mean over its images, whatever the batch size (a partial last
        # batch weighs its own images); update, not forward: no per-batch compute
        loss_metric.update(per_image.detach())
        acc.update(logits.detach(), labels)
        return per_image.mean()

    def _log_epoch(
        self, stage: str, loss: MeanMetric, acc: MulticlassAccuracy, prog_bar: bool = True
    ) -> torch.Tensor:
        """Compute, log and reset the epoch's loss and accuracy once (logging the Metric objects
        every step costs Lightning a device move per `self.log`); return the loss."""
        epoch_loss = loss.compute()
        self.log_dict({f"{stage}/loss": epoch_loss, f"{stage}/acc": acc.compute()}, prog_bar=prog_bar)
        loss.reset()
        acc.reset()
        return epoch_loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_loss, self.train_acc)
        # only where Lightning writes its logs: each `self.log` call costs ~1 ms of Python
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        self._check_finite(self._log_epoch("train", self.train_loss, self.train_acc))

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):  # one host read per epoch
            raise TrainingDiverged(
                f"training diverged: the training loss is {loss.item()} in epoch {self.current_epoch}; "
                "the usual cause is a learning rate too high (model.optimizer.lr)"
            )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, self.val_loss, self.val_acc)

    def on_train_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        accuracy = self.val_acc.compute()
        self.val_acc_best(accuracy)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)
        loss = self._log_epoch("val", self.val_loss, self.val_acc)
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            # one line per epoch in the run's train.log (one host read per epoch)
            started = getattr(self, "_epoch_started", None)
            seconds = f", {time.perf_counter() - started:.0f} s" if started is not None else ""
            log.info(
                "epoch %d: val/acc %.4f, val/loss %.4f%s",
                self.current_epoch, float(accuracy), float(loss), seconds,
            )  # fmt: skip

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, self.test_loss, self.test_acc)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_loss, self.test_acc, prog_bar=False)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The classifier's parameters, and the localization net's as a group of its own."""
        groups = [{"params": list(self.net.classifier.parameters()), "name": "classifier"}]
        if self.net.transformer is not None:
            groups.append({"params": list(self.net.transformer.parameters()), "name": "localization"})
        return groups

    def _optimizer_steps(self) -> int:
        """The run's optimizer steps: one per training call (Lightning's own estimate)."""
        return int(self.trainer.estimated_stepping_batches)

    def _run_length_arguments(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What a one-cycle schedule left open (null) in its config, from the run itself: its
        length in optimizer steps, and each parameter group's peak lr (the group's own lr, so the
        localization net keeps its scaled step)."""
        keywords = getattr(self.scheduler_factory, "keywords", {})
        left_open = {key for key, value in keywords.items() if value is None}
        arguments: dict[str, Any] = {}
        if "total_steps" in left_open:
            # OneCycleLR divides by zero when its warm-up is shorter than one step, so a very short
            # run (debug=fdr) gets the shortest schedule that works and stops part way through it
            shortest = math.floor(1 / keywords.get("pct_start", 0.3)) + 1
            arguments["total_steps"] = max(self._optimizer_steps(), shortest)
        if "max_lr" in left_open:
            arguments["max_lr"] = [group["lr"] for group in optimizer.param_groups]
        return arguments

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        for group in optimizer.param_groups:
            if group.get("name") == "localization":
                group["lr"] *= self.hparams.localization_lr_scale
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer, **self._run_length_arguments(optimizer))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }
