"""MNIST's four official files in `<data_dir>/MNIST/raw/`, checked before torchvision reads them:
each present file a regular file of a bounded size (a FIFO or a link to /dev/zero would hang the
md5 check), each unpacked file of its official size, the labels 0..9; unpacked by one process at
a time. Every refusal is one sentence naming the expected path and file (`MNISTDataError`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from stn.errors import ConfigError, UserError, first_line
from stn.utils.files import MAX_DATA_BYTES, check_regular, file_digest, file_lock

WHERE = "set data.data_dir or STN_DATA_DIR to the folder that holds MNIST/raw/"


class MNISTDataError(UserError):
    """MNIST is missing or corrupt where it was expected."""


# the unpacked files' sizes: a 16-byte (images) or 8-byte (labels) header, then one byte per pixel
# or label
UNPACKED_SIZES = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}


@contextmanager
def _unpack_lock(raw_dir: Path, create: bool) -> Iterator[None]:
    """Wait for, then hold, `raw_dir`'s lock (stn.utils.files.file_lock), creating the folder only
    with `create` (a download). Where the folder is missing or cannot be written there is nothing
    to unpack into, and no lock is needed."""
    try:
        if create:
            raw_dir.mkdir(parents=True, exist_ok=True)
        (raw_dir / ".unpack.lock").touch()
    except OSError:
        yield
        return
    with file_lock(raw_dir / ".unpack.lock"):
        yield


def _md5(path: Path) -> str:
    return file_digest(path, "md5", MAX_DATA_BYTES)


def missing_message(raw_dir: Path, cause: Exception | None = None) -> str:
    """What is missing or corrupt in `raw_dir`, or why the sound archives could not be unpacked."""
    problems = []
    for filename, md5 in MNIST.resources:
        path = raw_dir / filename
        if path.with_suffix("").exists():
            continue
        if not path.exists():
            problems.append(f"{filename} is missing")
        elif (found := _md5(path)) != md5:
            problems.append(f"{filename} is corrupt (md5 {found}, expected {md5})")
    if not problems and cause is not None:  # the archives are all there and sound: unpacking failed
        return (
            f"MNIST's files are in {raw_dir} but could not be unpacked there ({first_line(cause)}); "
            "make the folder writable, or unpack them there yourself (gunzip -k *.gz)"
        )
    detail = "; ".join(problems) or "the files could not be read"
    message = (
        f"MNIST not found in {raw_dir}: {detail}. Expected the four official files "
        f"{', '.join(name for name, _ in MNIST.resources)} there ({WHERE})."
    )
    if cause is not None:
        message += f" Download was not possible: {first_line(cause)}"
    return message


def check_regular_files(raw_dir: Path) -> None:
    """Every MNIST file present (archive or unpacked) is a regular file of a bounded size:
    torchvision's md5 check would read a FIFO forever, or a link to /dev/zero whole."""
    for filename, _ in MNIST.resources:
        for path in (raw_dir / filename, (raw_dir / filename).with_suffix("")):
            if path.exists() or path.is_symlink():
                try:
                    check_regular(path, MAX_DATA_BYTES)
                except ConfigError as error:
                    raise MNISTDataError(
                        f"{error}. Expected the official MNIST file there ({WHERE})"
                    ) from None


def check_unpacked(raw_dir: Path) -> None:
    """The unpacked files torchvision reads have their official sizes (a truncated copy would
    otherwise fail as a tensor shape error, naming no file)."""
    check_regular_files(raw_dir)
    for filename, size in UNPACKED_SIZES.items():
        path = raw_dir / filename
        if path.is_file() and path.stat().st_size != size:
            raise MNISTDataError(corrupt_message(path, f"{path.stat().st_size} bytes, expected {size}"))


def corrupt_message(path: Path, detail: str) -> str:
    archive = path.with_name(path.name + ".gz")
    fix = (
        f"the next run re-checks {archive.name} and unpacks it again"
        if archive.is_file()
        else f"then put the official {archive.name} in {path.parent}"
    )
    return f"{path} is corrupt ({detail}): delete it; {fix}"


def unpack(data_dir: Path, download: bool) -> None:
    """Check `data_dir`'s MNIST files and (with `download`: torchvision's download, which skips the
    files already there with the right md5) unpack them, one process at a time: the jobs of a
    parallel sweep start together, and one would otherwise read a file another is still writing."""
    raw_dir = data_dir / "MNIST" / "raw"
    with _unpack_lock(raw_dir, create=download):
        check_unpacked(raw_dir)
        if not download:
            return
        for train in (True, False):
            try:
                MNIST(data_dir, train=train, download=True)
            except (RuntimeError, OSError, EOFError) as error:
                raise MNISTDataError(missing_message(raw_dir, error)) from error


def load_split(data_dir: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 28, 28) uint8 images and (N,) int64 labels of the training or test split."""
    raw_dir = data_dir / "MNIST" / "raw"
    check_unpacked(raw_dir)
    try:
        dataset = MNIST(data_dir, train=train, download=False)
    except (RuntimeError, OSError, EOFError) as error:
        raise MNISTDataError(missing_message(raw_dir)) from error
    labels = dataset.targets
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
        labels_file = raw_dir / ("train-labels-idx1-ubyte" if train else "t10k-labels-idx1-ubyte")
        found = f"labels {int(labels.min())}..{int(labels.max())}, expected 0..9"
        raise MNISTDataError(corrupt_message(labels_file, found))
    return dataset.data.unsqueeze(1), labels
