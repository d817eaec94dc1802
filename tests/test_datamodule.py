import shutil
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from stn.data import MNIST_MEAN, MNIST_STD, MNISTDataError, MNISTDataModule
from stn.data.batching import DeviceBatches, EpochShuffle


@pytest.fixture(scope="module")
def datamodule(mnist_dir: Path) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(mnist_dir), batch_size=64)
    dm.prepare_data()
    dm.setup()
    return dm


def test_split_sizes(datamodule: MNISTDataModule):
    assert len(datamodule.train_set) == 55_000
    assert len(datamodule.val_set) == 5_000
    assert len(datamodule.test_set) == 10_000
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64


def test_split_is_seeded_and_disjoint(datamodule: MNISTDataModule, mnist_dir: Path):
    again = MNISTDataModule(data_dir=str(mnist_dir))
    again.setup("fit")
    assert torch.equal(again.val_set.images, datamodule.val_set.images)
    other = MNISTDataModule(data_dir=str(mnist_dir), split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.val_set.labels, datamodule.val_set.labels)
    # no validation image is also a training image (MNIST has no exact duplicates to speak of)
    train_keys = {hash(image.numpy().tobytes()) for image in datamodule.train_set.images[:5000]}
    val_keys = {hash(image.numpy().tobytes()) for image in datamodule.val_set.images}
    assert len(train_keys & val_keys) <= 1


def test_normalisation_uses_mnist_statistics(datamodule: MNISTDataModule):
    assert datamodule.train_set.images.dtype == torch.uint8  # held as pixels, normalised per batch
    images, _ = datamodule.train_set.batch(slice(None))
    assert images.mean().item() == pytest.approx(0.0, abs=5e-3)
    assert images.std().item() == pytest.approx(1.0, abs=5e-3)
    assert images.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)  # the background


def _batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop does at every epoch start
    return list(loader)


@pytest.mark.parametrize("subset", [1000, 1030])  # a full and a partial last batch
def test_fast_and_plain_paths_give_identical_batches(mnist_dir: Path, subset: int):
    loaders = {}
    for fast_path in (True, False):
        dm = MNISTDataModule(
            data_dir=str(mnist_dir), batch_size=64, fast_path=fast_path, shuffle_seed=7, train_subset=subset
        )
        dm.setup()
        loaders[fast_path] = (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader())
    assert isinstance(loaders[True][0], DeviceBatches)
    assert isinstance(loaders[False][0], DataLoader)
    for fast, plain in zip(loaders[True], loaders[False], strict=True):
        assert len(fast) == len(plain)
        for epoch in (0, 1):
            fast_batches, plain_batches = _batches(fast, epoch), _batches(plain, epoch)
            assert len(fast_batches) == len(plain_batches)
            for (fast_images, fast_labels), (plain_images, plain_labels) in zip(
                fast_batches, plain_batches, strict=True
            ):
                assert fast_images.dtype == plain_images.dtype == torch.float32
                assert torch.equal(fast_images, plain_images)  # bit for bit
                assert torch.equal(fast_labels, plain_labels)
    train = loaders[True][0]
    epoch_0, epoch_1 = _batches(train, 0), _batches(train, 1)
    assert not torch.equal(epoch_0[0][1], epoch_1[0][1])  # a new order every epoch
    assert torch.equal(_batches(train, 0)[0][0], epoch_0[0][0])  # the same order for the same epoch
    seen = torch.cat([labels for _, labels in epoch_1])
    assert len(seen) == subset and torch.equal(seen.sort().values, train.dataset.labels.sort().values)


def test_epoch_order_follows_the_shuffle_seed():
    first, again, other = EpochShuffle(100, seed=1), EpochShuffle(100, seed=1), EpochShuffle(100, seed=2)
    assert list(first) == list(again)
    assert list(first) != list(other)
    assert sorted(first) == list(range(100))
    first.set_epoch(3)
    assert list(first) != list(again)


def test_shuffle_seed_defaults_to_the_global_seed(mnist_dir: Path):
    seeds = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        dm = MNISTDataModule(data_dir=str(mnist_dir), train_subset=100)
        dm.setup("fit")
        seeds.append(dm.shuffle_seed)
    assert seeds[0] == seeds[1] != seeds[2]


def test_validation_batches_are_in_a_fixed_order(datamodule: MNISTDataModule):
    first = next(iter(datamodule.val_dataloader()))[1]
    second = next(iter(datamodule.val_dataloader()))[1]
    assert torch.equal(first, second)


def test_missing_data_dir_names_the_path_and_files(tmp_path: Path):
    empty = tmp_path / "nowhere"
    dm = MNISTDataModule(data_dir=str(empty), download=False)
    with pytest.raises(MNISTDataError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert str(empty / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz is missing" in message


def test_corrupt_file_is_named(tmp_path: Path, mnist_dir: Path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    for unpacked in raw.glob("*-ubyte"):
        unpacked.unlink()
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file")
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(MNISTDataError, match=r"train-labels-idx1-ubyte.gz is corrupt \(md5"):
        dm.setup("fit")
