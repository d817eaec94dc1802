"""The LightningModule's speed options, chosen by config and kept out of its science:

- `channels_last`: NHWC weights and inputs (oneDNN's convolution kernels on a CPU);
- `compile` (`compile_mode`): `torch.compile` of the network, in place, so checkpoints keep their
  keys; a compiler that fails stops the run with one sentence (stn/models/acceleration.py);
- `cuda_graph`: each training step's forward and backward replayed as one CUDA graph
  (stn/models/graphed_step.py) with the optimizer stepped here (manual optimization), so a training
  batch may also be a list of batches (`data.batches_per_call`): several optimizer steps per
  Lightning call, the same updates in the same order.

`SpeedOptions` is mixed into `STNLitModule` before `LightningModule`; with every option off it
adds nothing to a step. What each option is worth is measured in benchmarks/ (docs/performance.md).
"""

from __future__ import annotations

import math
import warnings

import torch

from stn.errors import Allowed, check, one_of
from stn.models.acceleration import (
    COMPILE_MODES,
    CUDA_GRAPH_MODES,
    compile_failure,
    compile_mode_for,
    to_channels_last,
)
from stn.models.graphed_step import StaticShapeStep

Batch = tuple[torch.Tensor, torch.Tensor]


class SpeedOptions:
    """Mixin for a LightningModule whose network is `self.net` (module docstring)."""

    def _init_speed(self, channels_last: bool, compile: bool, compile_mode: str, cuda_graph: bool) -> None:
        check(self, one_of(*COMPILE_MODES), compile_mode=compile_mode)
        alone = Allowed(lambda v: not (v and compile), "false when model.compile=true")
        why = "the graphed step and torch.compile each capture the network: choose one"
        check(self, alone.because(why), cuda_graph=cuda_graph)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self._compiled = False
        self._cuda_graphs = False
        self._modes_compiled: set[bool] = set()  # `training` values whose first compiled call worked
        self.automatic_optimization = not cuda_graph  # the graphed step steps the optimizer itself
        self._static_step: StaticShapeStep | None = None  # built at the first training step

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

    def _graphed_training_step(self, batches: list[Batch], batch_idx: int) -> torch.Tensor:
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
        # as the automatic step: only where Lightning writes its logs (every `log_every_n_steps`
        # calls), each `self.log` costing ~1 ms of Python; a call of several batches logs each time
        every = self.trainer.log_every_n_steps
        if len(batches) > 1 or (every and self.trainer.global_step % every == 0):
            self.log("train/loss_step", loss.clone(), on_step=True, on_epoch=False)
        return loss

    def on_validation_model_zero_grad(self) -> None:
        # the graphed step's gradients live in the graph's memory: they must stay where they are
        if self.automatic_optimization:
            super().on_validation_model_zero_grad()

    def _graphed_epoch_end(self) -> None:
        metrics = self._static_step.epoch_metrics() if self._static_step is not None else None
        if metrics is not None:
            loss, accuracy = metrics
            self.log_dict({"train/loss": loss, "train/acc": accuracy}, prog_bar=True)
            self._check_finite(loss)

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
