"""MNIST as a LightningDataModule that decodes the dataset once and serves normalised in-memory tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import MNIST

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
TRAIN_SIZE = 60_000


class MNISTDataError(RuntimeError):
    """MNIST is missing or corrupt where it was expected."""


class InMemoryImages(Dataset):
    """Normalised images and labels held as two tensors.

    `__getitems__` lets the DataLoader fetch a whole batch with one tensor index instead of
    one Python call and one collate per sample.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images  # (N, 1, H, W) float32, normalised
        self.labels = labels  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for `InMemoryImages.__getitems__`, whose batches are already stacked."""
    return batch


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class MNISTDataModule(L.LightningDataModule):
    """MNIST with a seeded train/val split of the 60k training images and the official 10k test set.

    `prepare_data` uses torchvision's own download, which skips files already in
    `<data_dir>/MNIST/raw/` whose md5 matches, so a copied download cache works offline.
    `train_subset` / `test_subset` take the first N of each split (for tests and smoke runs).
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
    ) -> None:
        super().__init__()
        if not 0 < val_size < TRAIN_SIZE:
            raise ValueError(f"val_size must be in 1..{TRAIN_SIZE - 1}, got {val_size}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
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
        images = dataset.data.unsqueeze(1).float().div_(255)  # (N, 1, 28, 28) in [0, 1]
        images = images.sub_(self.hparams.mean).div_(self.hparams.std)
        return images, dataset.targets

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self._load(train=True)
            generator = torch.Generator().manual_seed(self.hparams.split_seed)
            order = torch.randperm(len(labels), generator=generator)
            val_index, train_index = order[: self.hparams.val_size], order[self.hparams.val_size :]
            train_index = train_index[: self.hparams.train_subset]
            self.train_set = InMemoryImages(images[train_index], labels[train_index])
            self.val_set = InMemoryImages(images[val_index], labels[val_index])
        if stage in (None, "test", "predict") and self.test_set is None:
            images, labels = self._load(train=False)
            subset = self.hparams.test_subset
            self.test_set = InMemoryImages(images[:subset], labels[:subset])

    def _loader(self, dataset: InMemoryImages | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=keep_batch,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
