"""A training step's forward and backward at one fixed batch shape, replayed as a CUDA graph.

Why: at batch 64 a step of the tutorial's 27k-parameter network is a few hundred small kernels,
and the GPU spends most of the step waiting for Python to launch them. Captured once as a CUDA
graph, the step is one launch. A graph replays fixed shapes and fixed memory, so:

- the batch is copied into static input buffers, and a partial batch (an epoch's last) is padded
  to the full size with weight 0: the loss is the mean over the real images only, so its gradient
  is exactly that of the unpadded batch, and the shape never changes;
- the gradients live in the graph's memory (`.grad` must not be set to None after capture);
- the epoch's loss sum and correct count accumulate inside the graph, so the metrics cost no
  launches either.

The optimizer's update stays outside (a few foreach kernels), so any optimizer and scheduler work
unchanged, learning-rate changes included. Without CUDA the same padded step runs eagerly: the
same arithmetic, so it can be checked on a CPU.

Pure PyTorch: the graphed LightningModule (stn/models/graphed_module.py) calls it from a
manual-optimization training step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

WARMUP_STEPS = 3  # eager steps before the capture (cuDNN and the allocator settle; a side stream)


class StaticShapeStep:
    """Forward, backward and metric sums of `network` on batches of at most `capacity` images.

    `capacity` is set by the first batch; a larger batch later re-allocates and captures again.
    Each call leaves the gradients in the parameters' `.grad` (overwritten, not accumulated) for
    the optimizer, and returns the batch's mean loss (a tensor that the next call overwrites).
    """

    def __init__(
        self, network: Callable[[torch.Tensor], torch.Tensor], parameters: Iterable[nn.Parameter]
    ) -> None:
        self.network = network
        self.parameters = [p for p in parameters if p.requires_grad]
        self.capacity = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0
        self.loss_total: torch.Tensor | None = None  # sum of the real images' losses this epoch
        self.correct_total: torch.Tensor | None = None  # their correct predictions
        self.count = 0  # their number (host side: no read needed)

    # -- the step itself -----------------------------------------------------------------------

    def _allocate(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.capacity = images.shape[0]
        self.images = torch.zeros_like(images)  # (B, C, H, W)
        self.labels = torch.zeros_like(labels)  # (B,)
        self.weights = torch.zeros(self.capacity, device=images.device)  # (B,) 1/n real, 0 padding
        self.real = torch.zeros(self.capacity, device=images.device, dtype=torch.bool)  # (B,)
        self.filled = -1  # how many rows the weights are set for
        if self.loss_total is None:
            self.loss_total = torch.zeros((), device=images.device)
            self.correct_total = torch.zeros((), device=images.device, dtype=torch.long)
        self.graph = None
        self.eager_steps = 0

    def _forward_backward(self) -> torch.Tensor:
        logits = self.network(self.images)  # (B, classes)
        losses = F.cross_entropy(logits, self.labels, reduction="none")  # (B,)
        loss = (losses * self.weights).sum()  # the mean over the real rows
        loss.backward()
        with torch.no_grad():
            self.loss_total += (losses * self.real).sum()
            self.correct_total += ((logits.argmax(dim=1) == self.labels) & self.real).sum()
        return loss.detach()

    def _load(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        count = images.shape[0]
        self.images[:count].copy_(images)
        self.labels[:count].copy_(labels)
        if count != self.filled:  # the epoch's last batch, and the next epoch's first
            self.images[count:].zero_()
            self.labels[count:].zero_()
            self.weights.zero_()[:count] = 1.0 / count
            self.real.zero_()[:count] = True
            self.filled = count

    def _clear_gradients(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if images.shape[0] > self.capacity:
            self._allocate(images, labels)
        self._load(images, labels)
        self.count += images.shape[0]
        if not images.is_cuda:
            self._clear_gradients()
            return self._forward_backward()
        if self.graph is None and self.eager_steps >= WARMUP_STEPS:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.loss
        # warm-up: eager on a side stream, as graph capture requires
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._clear_gradients()
            loss = self._forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        self.eager_steps += 1
        return loss

    def _capture(self) -> None:
        # the capture records the step without running it; the graph then runs it on replay.
        # Gradients set to None first: backward inside the capture allocates them in the graph's
        # memory and every replay writes them afresh
        self._clear_gradients()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.loss = self._forward_backward()
        self.graph = graph

    # -- the epoch's metrics ---------------------------------------------------------------------

    def epoch_metrics(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The epoch's mean loss and accuracy over every real image so far (device tensors), and a
        fresh start for the next epoch; None before the first step."""
        if self.count == 0 or self.loss_total is None:
            return None
        loss = self.loss_total / self.count
        accuracy = self.correct_total.float() / self.count
        self.loss_total.zero_()
        self.correct_total.zero_()
        self.count = 0
        return loss, accuracy
