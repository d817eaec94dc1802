import shutil
from pathlib import Path

import pytest
import torch

from stn.data import MNIST_MEAN, MNIST_STD, MNISTDataError, MNISTDataModule


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
    images = torch.cat([datamodule.train_set.images, datamodule.val_set.images])
    assert images.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert images.std().item() == pytest.approx(1.0, abs=1e-3)
    assert images.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)  # the background


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
