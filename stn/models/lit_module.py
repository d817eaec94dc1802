"""The LightningModule: loss, accuracy metrics and optimisation around an STN (or plain CNN) classifier."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from stn.errors import TrainingDiverged, check_argument, is_number
from stn.models.acceleration import (
    COMPILE_MODES,
    CUDA_GRAPH_MODES,
    compile_failure,
    compile_mode_for,
    to_channels_last,
)
from stn.models.classifier import STNClassifier
from stn.models.graphed_step import StaticShapeStep
from stn.models.transformer import SpatialTransformer

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
TransformerFactory = Callable[[nn.Module], SpatialTransformer]  # localization -> transformer


class STNLitModule(L.LightningModule):
    """Trains `classifier`, with the spatial transformer `transformer(localization)` in front of it
    when `localization` is given (`model=cnn`: none).

    `optimizer` and `scheduler` are factories (Hydra partials) that get the parameter groups and
    the optimizer. The localization net (with the transformer's head) is its own parameter group,
    its learning rate scaled by `localization_lr_scale`: a smaller step keeps theta from jumping
    early in training.

    The training step never waits for the device: metrics accumulate on it (no per-step
    `.item()`, no input validation), epoch metrics are computed and logged once per epoch, and
    the step loss is logged only every `trainer.log_every_n_steps`.
    `channels_last` and `compile` (`compile_mode="reduce-overhead"` adds CUDA graphs) are speed
    options; see benchmarks/ for what each is worth. `cuda_graph` replays each training step's
    forward and backward as one CUDA graph (stn/models/graphed_step.py) and steps the optimizer
    itself (manual optimization), so a training batch may also be a list of batches
    (`data.batches_per_call`): several optimizer steps per Lightning call, the same updates in the
    same order.
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
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self)
        check_argument(
            owner, "scheduler_interval", scheduler_interval, lambda v: v in ("epoch", "step"), "epoch | step"
        )
        check_argument(
            owner, "localization_lr_scale", localization_lr_scale, lambda v: is_number(v) and v >= 0, ">= 0"
        )
        check_argument(
            owner, "compile_mode", compile_mode, lambda v: v in COMPILE_MODES, " | ".join(COMPILE_MODES)
        )
        check_argument(
            owner, "cuda_graph", cuda_graph, lambda v: not (v and compile), "false when model.compile=true",
            "the graphed step and torch.compile each capture the network: choose one",
        )  # fmt: skip
        # modules and factories stay out of the checkpoint's hparams so it loads with weights_only;
        # the full config is in the run folder (.hydra/config.yaml) and the logger's hparams
        self.save_hyperparameters(
            logger=False, ignore=["classifier", "localization", "optimizer", "scheduler", "transformer"]
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        spatial_transformer = transformer(localization) if localization is not None else None
        self.net = STNClassifier(classifier, spatial_transformer)

        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._compiled = False
        self._cuda_graphs = False
        self._modes_compiled: set[bool] = set()  # `training` values whose first compiled call worked
        # the graphed step steps the optimizer itself; built at the first training step
        self.automatic_optimization = not cuda_graph
        self._static_step: StaticShapeStep | None = None

        # validate_args=False and nan_strategy="disable": the checks read tensors on the host,
        # which would stall the GPU every step; labels come from the datamodule and a NaN loss
        # still shows as a NaN epoch mean
        def accuracy() -> MulticlassAccuracy:
            return MulticlassAccuracy(
                num_classes=classifier.num_classes, average="micro", validate_args=False
            )

        self.train_acc, self.val_acc, self.test_acc = accuracy(), accuracy(), accuracy()
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()

    def configure_model(self) -> None:
        if self.hparams.compile and not self._compiled:
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            # in place (nn.Module.compile), so the state_dict keys and checkpoints do not change.
            # dynamic=False: a new batch size (an epoch's last, partial batch; validation) compiles
            # one more static graph; a dynamic batch dimension fails in affine_grid's backward
            mode = compile_mode_for(self.hparams.compile_mode, device)
            # a new model starts from empty compiler caches: code compiled for an earlier model in this
            # process (and its CUDA graph trees) must not serve this one with the earlier weights
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

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], loss_metric: MeanMetric, acc: MulticlassAccuracy
    ) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        loss_metric.update(loss.detach())  # update, not forward: no per-batch compute
        acc.update(logits.detach(), labels)
        return loss

    def _log_epoch(
        self, stage: str, loss: MeanMetric, acc: MulticlassAccuracy, prog_bar: bool = True
    ) -> torch.Tensor:
        """Compute the epoch's loss and accuracy once, log them, reset for the next epoch, and
        return the loss.

        Logging the Metric objects from every step instead costs Lightning ~1 ms per call (it moves
        each logged Metric to the device on every `self.log`): a quarter of a CPU step."""
        epoch_loss = loss.compute()
        self.log_dict({f"{stage}/loss": epoch_loss, f"{stage}/acc": acc.compute()}, prog_bar=prog_bar)
        loss.reset()
        acc.reset()
        return epoch_loss

    def training_step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]],
        batch_idx: int,
    ) -> torch.Tensor:
        if not self.automatic_optimization:
            return self._graphed_training_step(batch if isinstance(batch, list) else [batch], batch_idx)
        loss = self._step(batch, self.train_loss, self.train_acc)
        # only on the steps Lightning writes its logs (its own test, `trainer.log_every_n_steps`): the
        # write reads the value on the host, and each `self.log` call costs ~1 ms of Python
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def _graphed_training_step(
        self, batches: list[tuple[torch.Tensor, torch.Tensor]], batch_idx: int
    ) -> torch.Tensor:
        """One optimizer step per batch, each batch's forward and backward a graph replay."""
        if self._static_step is None:
            if self.device.type != "cuda":
                warnings.warn(
                    f"model.cuda_graph=true replays CUDA graphs, which need a CUDA device; the model runs "
                    f"on {self.device.type}, so each step runs eagerly (the same arithmetic)",
                    stacklevel=2,
                )
            self._static_step = StaticShapeStep(self, self.net.parameters())
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        every_step = scheduler is not None and self.hparams.scheduler_interval == "step"
        for images, labels in batches:
            loss = self._static_step(images, labels)
            optimizer.step()
            if every_step:
                scheduler.step()
        # where Lightning steps an epoch schedule: after the epoch's last batch, before the
        # validation and the checkpoint, so a resumed run goes on at the same learning rate
        if scheduler is not None and not every_step and batch_idx + 1 == self.trainer.num_training_batches:
            scheduler.step()
        # as the automatic step: the loss of the step Lightning writes its logs after
        if self.trainer._logger_connector.should_update_logs:
            self.log("train/loss_step", loss.clone(), on_step=True, on_epoch=False)
        return loss

    def on_validation_model_zero_grad(self) -> None:
        # the graphed step's gradients live in the graph's memory: they must stay where they are
        if self.automatic_optimization:
            super().on_validation_model_zero_grad()

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            self._graphed_epoch_end()
            return
        self._check_finite(self._log_epoch("train", self.train_loss, self.train_acc))

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):  # one host read per epoch
            raise TrainingDiverged(
                f"training diverged: the training loss is {loss.item()} in epoch {self.current_epoch}; "
                "the usual cause is a learning rate too high (model.optimizer.lr)"
            )

    def _graphed_epoch_end(self) -> None:
        metrics = self._static_step.epoch_metrics() if self._static_step is not None else None
        if metrics is not None:
            loss, accuracy = metrics
            self.log_dict({"train/loss": loss, "train/acc": accuracy}, prog_bar=True)
            self._check_finite(loss)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self.val_loss, self.val_acc)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)
        self._log_epoch("val", self.val_loss, self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
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
        """The run's optimizer steps. Lightning's estimate counts training calls, and with
        `data.batches_per_call` a call holds a list of batches, one step each."""
        calls = int(self.trainer.estimated_stepping_batches)
        loader = self.trainer.train_dataloader
        per_call = getattr(loader, "batches_per_call", 1)
        if per_call == 1:
            return calls
        calls_per_epoch = self.trainer.num_training_batches  # trainer.limit_train_batches applied
        steps_per_epoch = min(calls_per_epoch * per_call, loader.batch_count())
        return steps_per_epoch * math.ceil(calls / calls_per_epoch)

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
