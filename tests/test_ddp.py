"""Data-parallel training: DDP on two CPU processes, and each rank's share of the fast path's data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stn.data.batching import DeviceBatches, EpochShuffle, InMemoryImages

from .conftest import TINY, run


@pytest.mark.slow
def test_ddp_sim_trains_on_two_processes(tmp_path: Path, mnist_dir: Path):
    """Two ranks train one run; its test accuracy is what both ranks' halves of the test set add
    up to: the same checkpoint scored on the whole test set in one process gives the same number."""
    from stn.loading import checkpoint_model

    run_dir = tmp_path / "run"
    process = run(
        "stn.train", "trainer=ddp_sim", *TINY, "data.train_subset=4096", "data.test_subset=200",
        f"hydra.run.dir={run_dir}",
        data_dir=mnist_dir,
    )  # fmt: skip
    output = process.stdout + process.stderr
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    trained = checkpoint_model(Path(metrics["best_model_path"]))
    datamodule = trained.datamodule(data_dir=str(mnist_dir), test_subset=200)
    datamodule.prepare_data()
    datamodule.setup("test")
    images, labels = datamodule.test_set.batch(slice(None))
    with torch.no_grad():
        accuracy = (trained.network(images).argmax(1) == labels).float().mean().item()
    assert metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert 0.3 < accuracy < 1.0  # it learned in one small epoch, and scored the 200 images


def _dataset(count: int) -> InMemoryImages:
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 2, 2)
    return InMemoryImages(images.contiguous(), torch.arange(count), mean=0.0, std=1.0)


def _labels(batches: DeviceBatches) -> list[int]:
    return [int(label) for _, labels in batches for label in labels]


def test_ddp_ranks_split_the_fast_path_data():
    dataset, world = _dataset(103), 2
    train = [DeviceBatches(dataset, 8, EpochShuffle(103, 5), rank=r, world_size=world) for r in range(world)]
    shares = [_labels(batches) for batches in train]
    assert len(shares[0]) == len(shares[1]) == 51 and len(train[0]) == len(train[1]) == 7  # lockstep
    assert not set(shares[0]) & set(shares[1])  # disjoint
    whole = _labels(DeviceBatches(dataset, 8, EpochShuffle(103, seed=5)))
    assert sorted(shares[0] + shares[1]) == sorted(whole[: 51 * 2])  # the same epoch order, shared out
    val = [_labels(DeviceBatches(dataset, 8, rank=r, world_size=world)) for r in range(world)]
    assert val[0] + val[1] == list(range(103))  # every validation image once
