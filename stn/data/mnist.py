"""MNIST and the STN paper's distorted MNIST as LightningDataModules: decoded once, held as uint8
tensors, served in batches by `stn.data.batching` (on the training device by default)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from stn.data.batching import (
    DeviceBatches,
    EpochShuffle,
    InMemoryImages,
    keep_batch,
    worker_ignores_stop_signals,
)
from stn.data.distortions import MNIST_SIZE, Distortion
from stn.data.mnist_files import load_split, unpack
from stn.errors import Allowed, check, integers

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
TRAIN_SIZE = 60_000
TEST_SIZE = 10_000
DISTORTION_CHUNK = 1_000  # images distorted at a time when the fixed sets are made


class MNISTDataModule(L.LightningDataModule):
    """MNIST with a seeded train/val split of the 60k training images and the official 10k test set.

    `prepare_data` uses torchvision's own download, which skips files already in
    `<data_dir>/MNIST/raw/` whose md5 matches, so a copied download cache works offline.
    `train_subset` / `test_subset` take the first N of each split (for tests and smoke runs).
    `shuffle_seed` fixes the training order; None draws it from the global RNG (so `seed_everything`
    sets it). `batches_per_call` > 1 serves training batches in lists (stn/data/batching.py), for
    the graphed training step (`training_step=graphed`). `augment` (a stn.data.distortions.Augmentation)
    shifts, turns and scales each training batch on the device, freshly every epoch.
    """

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
        image_size: int = MNIST_SIZE,
        batches_per_call: int = 1,
        augment: Distortion | None = None,
    ) -> None:
        super().__init__()
        on_the_device = "augmentation is drawn on the training device by the fast path"
        check(
            self,
            Allowed(lambda v: v is None or fast_path, "null with fast_path=false", on_the_device),
            augment=augment,
        )
        check(self, integers(1), batches_per_call=batches_per_call)
        served_in_lists = "lists of batches are served by the fast path"
        check(
            self,
            Allowed(lambda v: v == 1 or fast_path, "1 with fast_path=false", served_in_lists),
            batches_per_call=batches_per_call,
        )
        check(self, integers(1), batch_size=batch_size)
        check(self, integers(0), num_workers=num_workers)
        check(self, integers(1, TRAIN_SIZE - 1), val_size=val_size)
        whole = "the whole set is null"
        check(self, integers(1, TRAIN_SIZE - val_size).or_null().because(whole), train_subset=train_subset)
        check(self, integers(1, TEST_SIZE).or_null().because(whole), test_subset=test_subset)
        self._check_image_size(image_size)
        # the machine's data folder stays out of checkpoints and hparams.yaml: a shared checkpoint
        # carries no local path of it (self.data_dir holds it)
        self.save_hyperparameters(ignore=["augment", "data_dir"])
        self.augment = augment
        self.data_dir = Path(data_dir)
        self.shuffle_seed = shuffle_seed
        self.train_set: InMemoryImages | None = None
        self.val_set: InMemoryImages | None = None
        self.test_set: InMemoryImages | None = None

    def _check_image_size(self, image_size: int) -> None:
        check(self, Allowed(lambda v: v == MNIST_SIZE, "28 (MNIST's size)"), image_size=image_size)

    @property
    def image_size(self) -> int:
        """The side of the square images this datamodule serves."""
        return self.hparams.image_size

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "MNIST" / "raw"

    def prepare_data(self) -> None:
        unpack(self.data_dir, self.hparams.download)

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_split(self.data_dir, train)

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
        """Training batches (`shuffle`), in lists of `batches_per_call`, or evaluation batches."""
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        sampler = EpochShuffle(len(dataset), self.shuffle_seed) if shuffle else None
        if self.hparams.fast_path:
            rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            return DeviceBatches(
                dataset.to(self.device), self.hparams.batch_size, sampler, distortion, rank, world_size,
                batches_per_call=self.hparams.batches_per_call if shuffle else 1,
            )  # fmt: skip
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=keep_batch,
            worker_init_fn=worker_ignores_stop_signals,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.train_set, shuffle=True, distortion=self.augment)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.test_set, shuffle=False)


class DistortedMNISTDataModule(MNISTDataModule):
    """The MNIST split of `MNISTDataModule`, distorted.

    Training batches are distorted afresh on the training device, a new draw every epoch (seeded
    by the shuffle seed and the epoch). Validation and test images are distorted once, on the CPU
    from `test_seed`, and kept as uint8: every model, on every device, is scored on the same
    images.
    """

    def __init__(self, distortion: Distortion, test_seed: int = 2015, **mnist) -> None:
        already_moved = "its distortion already moves every training digit"
        check(
            self,
            Allowed(lambda v: v is None, "null on a distorted variant", already_moved),
            augment=mnist.get("augment"),
        )
        generated = "the distorted variants are generated by the fast path only"
        check(self, Allowed(bool, "true", generated), fast_path=mnist.get("fast_path", True))
        self.distortion = distortion  # before super().__init__, which checks image_size against it
        super().__init__(**mnist)
        # the distortion is an object: its config is in the run folder, and the checkpoint stays
        # loadable with weights_only
        self.save_hyperparameters(ignore=["distortion", "data_dir"])
        self.test_seed = test_seed
        self._fixed: set[str] = set()

    def _check_image_size(self, image_size: int) -> None:
        canvas = self.distortion.canvas_size
        follows = "data.distortion.canvas_size follows data.image_size"
        check(
            self,
            Allowed(lambda v: v == canvas, f"{canvas}, the distortion's canvas", follows),
            image_size=image_size,
        )

    def fixed(self, dataset: InMemoryImages, seed: int) -> InMemoryImages:
        """`dataset` distorted once, from `seed`, as uint8 pixels on the CPU."""
        generator = torch.Generator().manual_seed(seed)
        chunks = [
            self.distortion(dataset.images[first : first + DISTORTION_CHUNK].float().div(255), generator)[0]
            for first in range(0, len(dataset), DISTORTION_CHUNK)
        ]
        pixels = torch.cat(chunks).mul_(255).round_().clamp_(0, 255).to(torch.uint8)  # (N, 1, S, S)
        return self._images(pixels, dataset.labels)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        for name, seed in (("val_set", self.test_seed + 1), ("test_set", self.test_seed)):
            dataset = getattr(self, name)
            if dataset is not None and name not in self._fixed:
                setattr(self, name, self.fixed(dataset, seed))
                self._fixed.add(name)

    def train_dataloader(self) -> DeviceBatches:
        return self._loader(self.train_set, shuffle=True, distortion=self.distortion)
