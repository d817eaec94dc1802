"""MNIST as a LightningDataModule: decoded once, held as uint8 tensors, batched by tensor indexing.

Two ways to serve batches, chosen by `fast_path`:

- fast path (default): the uint8 images live on the training device; each epoch is a permutation
  sliced into batches there, normalised per batch on the device (`DeviceBatches`). No DataLoader,
  no workers, no per-sample Python, no host-to-device copy per step.
- plain path: a DataLoader over the same tensors on the CPU (`InMemoryImages.__getitems__`
  fetches a whole batch with one index), the batches then copied to the device by Lightning.

Both draw their order from the same `EpochShuffle` and normalise in `InMemoryImages.batch`, so
they give identical batches for the same seed (tests/test_datamodule.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets import MNIST

from stn.data.distortions import Distortion

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
TRAIN_SIZE = 60_000

Batch = tuple[torch.Tensor, torch.Tensor]


class MNISTDataError(RuntimeError):
    """MNIST is missing or corrupt where it was expected."""


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
    ) -> None:
        if distortion is not None and sampler is None:
            raise ValueError("fresh distortions per batch need a sampler (its seed and epoch seed them)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler
        self.distortion = distortion
        self.batch_sampler = None  # what Lightning looks for on a DataLoader
        self.rank, self.world_size = rank, world_size

    def _block(self) -> tuple[int, int]:
        """This rank's contiguous [start, end) of an unshuffled dataset."""
        size = len(self.dataset)
        return size * self.rank // self.world_size, size * (self.rank + 1) // self.world_size

    def _count(self) -> int:
        if self.sampler is None:
            start, end = self._block()
            return end - start
        return len(self.dataset) // self.world_size

    def __len__(self) -> int:
        return math.ceil(self._count() / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
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


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class MNISTDataModule(L.LightningDataModule):
    """MNIST with a seeded train/val split of the 60k training images and the official 10k test set.

    `prepare_data` uses torchvision's own download, which skips files already in
    `<data_dir>/MNIST/raw/` whose md5 matches, so a copied download cache works offline.
    `train_subset` / `test_subset` take the first N of each split (for tests and smoke runs).
    `shuffle_seed` fixes the training order; None draws it from the global RNG (so `seed_everything`
    sets it).
    """

    image_size = 28
    in_channels = 1
    num_classes = 10

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int = 5_000,
        split_seed: int = 42,
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
        download: bool = True,
        pin_memory: bool = False,
        train_subset: int | None = None,
        test_subset: int | None = None,
        fast_path: bool = True,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0 < val_size < TRAIN_SIZE:
            raise ValueError(f"val_size must be in 1..{TRAIN_SIZE - 1}, got {val_size}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.shuffle_seed = shuffle_seed
        self.train_set: InMemoryImages | None = None
        self.val_set: InMemoryImages | None = None
        self.test_set: InMemoryImages | None = None

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "MNIST" / "raw"

    def _missing_message(self, cause: Exception | None = None) -> str:
        problems = []
        for filename, md5 in MNIST.resources:
            path = self.raw_dir / filename
            unpacked = path.with_suffix("")
            if unpacked.exists():
                continue
            if not path.exists():
                problems.append(f"{filename} is missing")
            elif (found := _md5(path)) != md5:
                problems.append(f"{filename} is corrupt (md5 {found}, expected {md5})")
        detail = "; ".join(problems) or "the files could not be read"
        message = (
            f"MNIST not found in {self.raw_dir}: {detail}. Expected the four official files "
            f"{', '.join(name for name, _ in MNIST.resources)} there (set data.data_dir or "
            "STN_DATA_DIR to the folder that holds MNIST/raw/)."
        )
        if cause is not None:
            message += f" Download was not possible: {str(cause).splitlines()[0]}"
        return message

    def prepare_data(self) -> None:
        if not self.hparams.download:
            return
        for train in (True, False):
            try:
                MNIST(self.data_dir, train=train, download=True)
            except (RuntimeError, OSError, EOFError) as error:
                raise MNISTDataError(self._missing_message(error)) from error

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            dataset = MNIST(self.data_dir, train=train, download=False)
        except (RuntimeError, OSError, EOFError) as error:
            raise MNISTDataError(self._missing_message()) from error
        return dataset.data.unsqueeze(1), dataset.targets  # (N, 1, 28, 28) uint8, (N,) int64

    def _images(self, images: torch.Tensor, labels: torch.Tensor) -> InMemoryImages:
        return InMemoryImages(images, labels, self.hparams.mean, self.hparams.std)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self._load(train=True)
            generator = torch.Generator().manual_seed(self.hparams.split_seed)
            order = torch.randperm(len(labels), generator=generator)
            val_index, train_index = order[: self.hparams.val_size], order[self.hparams.val_size :]
            train_index = train_index[: self.hparams.train_subset]
            self.train_set = self._images(images[train_index], labels[train_index])
            self.val_set = self._images(images[val_index], labels[val_index])
        if stage in (None, "test", "predict") and self.test_set is None:
            images, labels = self._load(train=False)
            subset = self.hparams.test_subset
            self.test_set = self._images(images[:subset], labels[:subset])
        if self.shuffle_seed is None:
            self.shuffle_seed = int(torch.randint(2**31 - 1, ()).item())

    @property
    def device(self) -> torch.device:
        """Where the fast path keeps the data: the trainer's device, or the CPU without a trainer."""
        if self.trainer is None:
            return torch.device("cpu")
        return self.trainer.strategy.root_device

    def _loader(
        self, dataset: InMemoryImages | None, shuffle: bool, distortion: Distortion | None = None
    ) -> DataLoader | DeviceBatches:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        sampler = EpochShuffle(len(dataset), self.shuffle_seed) if shuffle else None
        if self.hparams.fast_path:
            rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            return DeviceBatches(
                dataset.to(self.device), self.hparams.batch_size, sampler, distortion, rank, world_size
            )
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=keep_batch,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.test_set, shuffle=False)
