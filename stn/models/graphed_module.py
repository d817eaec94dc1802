"""The LightningModule with the CUDA-graphed training step: `training_step=graphed`.

Each training step's forward and backward are replayed as one CUDA graph (stn/models/graphed_step.py)
and the optimizer is stepped here (manual optimization), so a training batch may also be a list
of batches (`data.batches_per_call`): several optimizer steps per Lightning call, the same updates
in the same order as `STNLitModule`'s automatic step (tests/test_speed.py checks it). On a CPU the
same padded step runs eagerly, with one warning. What it is worth is measured in benchmarks/
(docs/performance.md). No GPU has run it here yet: tests/test_gpu.py checks its replays against
eager gradients wherever one is found, and docs/performance.md says so beside its CPU figures.
"""

from __future__ import annotations

import math
import warnings

import torch

from stn.errors import Allowed, check
from stn.models.graphed_step import StaticShapeStep
from stn.models.lit_module import Batch, STNLitModule


class GraphedSTNLitModule(STNLitModule):
    """`STNLitModule` whose training step is a graph replay and steps the optimizer itself."""

    def __init__(self, *args, compile: bool = False, **kwargs) -> None:
        alone = Allowed(lambda v: not v, "false with training_step=graphed")
        why = "the graphed step and torch.compile each capture the network: choose one"
        check(self, alone.because(why), compile=compile)
        super().__init__(*args, compile=compile, **kwargs)
        self.automatic_optimization = False  # the graphed step steps the optimizer itself
        self._static_step: StaticShapeStep | None = None  # built at the first training step

    def training_step(self, batch: Batch | list[Batch], batch_idx: int) -> torch.Tensor:
        """One optimizer step per batch, each batch's forward and backward a graph replay."""
        batches = batch if isinstance(batch, list) else [batch]
        if self._static_step is None:
            if self.device.type != "cuda":
                warnings.warn(
                    f"training_step=graphed replays CUDA graphs, which need a CUDA device; the model runs "
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
        pass  # the graphed step's gradients live in the graph's memory: they must stay where they are

    def on_train_epoch_end(self) -> None:
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
