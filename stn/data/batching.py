"""Serving in-memory uint8 images in batches, without per-sample Python.

Two ways, chosen by the datamodule's `fast_path`:

- `DeviceBatches`: the uint8 images live on the training device; each epoch is a permutation
  sliced into batches there, normalised per batch on the device. No DataLoader, no workers, no
  host-to-device copy per step.
- a DataLoader over `InMemoryImages`, whose `__getitems__` fetches a whole batch with one index;
  Lightning then copies the batches to the device.

Both draw their order from the same `EpochShuffle` and normalise in `InMemoryImages.batch`, so
they give identical batches for the same seed (tests/test_datamodule.py).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from stn.data.distortions import Distortion

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochShuffle(Sampler[int]):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone.

    Lightning calls `set_epoch` at the start of every training epoch, so the order depends on
    neither the device nor the global RNG: the fast and the plain path see the same batches, and a
    run resumed at epoch k sees the order an uninterrupted run would have.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_seed(self) -> int:
        return (self.seed % 2**32) * 2**20 + self.epoch

    def generator(self, device: torch.device, rank: int = 0) -> torch.Generator:
        """A generator on `device` for this epoch's random augmentations (a stream of its own)."""
        # each DDP rank draws its own distortions: rank r uses the stream 2**56 * r further on
        return torch.Generator(device=device).manual_seed(2**60 + 2**56 * rank + self._epoch_seed())

    def permutation(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self._epoch_seed())
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.size


class InMemoryImages(Dataset):
    """uint8 images and int64 labels as two tensors (on any device), normalised per batch.

    `__getitems__` lets a DataLoader fetch a whole batch with one tensor index instead of one
    Python call and one collate per sample.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> None:
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 pixels, got {images.dtype}")
        self.images = images  # (N, 1, H, W) uint8
        self.labels = labels  # (N,) int64
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def batch(
        self,
        index: torch.Tensor | slice,
        distortion: Distortion | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Normalised float32 images, (x / 255 - mean) / std, and labels at `index`, on the
        tensors' device; with a `distortion`, distorted first (in [0, 1] pixel space, drawing from
        `generator`)."""
        pixels = self.images[index].float().div_(255)  # (N, 1, H, W) in [0, 1]
        if distortion is not None:
            pixels, _ = distortion(pixels, generator)
        return pixels.sub_(self.mean).div_(self.std), self.labels[index]

    def __getitem__(self, index: int) -> Batch:
        images, label = self.batch(slice(index, index + 1))
        return images[0], label[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.batch(torch.as_tensor(indices))

    def to(self, device: torch.device) -> InMemoryImages:
        if self.images.device == device:
            return self
        return InMemoryImages(self.images.to(device), self.labels.to(device), self.mean, self.std)


def keep_batch(batch: Batch) -> Batch:
    """Collate for `InMemoryImages.__getitems__`, whose batches are already stacked."""
    return batch


class DeviceBatches:
    """Batches sliced from an `InMemoryImages` that lives on the training device.

    An iterable with a length, which Lightning accepts in place of a DataLoader; `sampler` is
    where Lightning finds `set_epoch`. Without a sampler the order is fixed (validation, test) and
    each batch is a view, not a copy. With a `distortion` (training on a distorted variant), every
    batch is distorted afresh, from a generator seeded by the sampler's seed and epoch.

    With `batches_per_call` K > 1 (training only), each item is a list of up to K consecutive
    batches, the same batches in the same order: a training step that takes several optimizer steps
    per call (`training_step=graphed`) then costs Lightning's per-batch work once per K batches.

    Under DDP each of `world_size` ranks holds the whole dataset and takes its own share: in
    training every rank draws the same permutation and keeps every `world_size`-th image from its
    `rank` on, the same count on every rank (the last `size % world_size` of each epoch's order are
    left out), so the ranks step in lockstep; in validation and test each rank takes a contiguous
    block (torchmetrics sums the ranks' counts).
    """

    def __init__(
        self,
        dataset: InMemoryImages,
        batch_size: int,
        sampler: EpochShuffle | None = None,
        distortion: Distortion | None = None,
        rank: int = 0,
        world_size: int = 1,
        batches_per_call: int = 1,
    ) -> None:
        if distortion is not None and sampler is None:
            raise ValueError("fresh distortions per batch need a sampler (its seed and epoch seed them)")
        if batches_per_call > 1 and sampler is None:
            raise ValueError("lists of batches are for training (a sampler); evaluation takes one at a time")
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler
        self.distortion = distortion
        self.batch_sampler = None  # what Lightning looks for on a DataLoader
        self.rank, self.world_size = rank, world_size
        self.batches_per_call = batches_per_call

    def _block(self) -> tuple[int, int]:
        """This rank's contiguous [start, end) of an unshuffled dataset."""
        size = len(self.dataset)
        return size * self.rank // self.world_size, size * (self.rank + 1) // self.world_size

    def _count(self) -> int:
        if self.sampler is None:
            start, end = self._block()
            return end - start
        return len(self.dataset) // self.world_size

    def batch_count(self) -> int:
        """Batches an epoch (optimizer steps, in training); `len` counts the lists they come in."""
        return math.ceil(self._count() / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.batch_count() / self.batches_per_call)

    def __iter__(self) -> Iterator[Batch | list[Batch]]:
        if self.batches_per_call == 1:
            yield from self._batches()
            return
        group: list[Batch] = []
        for batch in self._batches():
            group.append(batch)
            if len(group) == self.batches_per_call:
                yield group
                group = []
        if group:
            yield group

    def _batches(self) -> Iterator[Batch]:
        step = self.batch_size
        if self.sampler is None:
            start, end = self._block()
            for first in range(start, end, step):
                yield self.dataset.batch(slice(first, min(first + step, end)))
            return
        device = self.dataset.images.device
        order = self.sampler.permutation().to(device)  # (N,) one copy per epoch
        if self.world_size > 1:  # this rank's share: (N // world_size,)
            order = order[self.rank : self._count() * self.world_size : self.world_size]
        generator = self.sampler.generator(device, self.rank) if self.distortion is not None else None
        for first in range(0, len(order), step):
            yield self.dataset.batch(order[first : first + step], self.distortion, generator)


def worker_ignores_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's start: it ignores SIGTERM and SIGINT. A scheduler (SLURM) and a
    terminal's Ctrl-C signal the whole process group; a worker that died of it first would end the
    run in a "DataLoader worker killed by signal" traceback instead of the main process's
    stopped-run sentence. The main process stops its workers itself, and a worker whose main
    process is gone exits on its own."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
