"""Data-parallel training: DDP on two CPU processes, and each rank's share of the fast path's data."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from stn.data.batching import DeviceBatches, EpochShuffle, InMemoryImages
from stn.paths import ROOT
from stn.utils.processes import descendants

from .conftest import TINY, cli_command, cli_env, run


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


@pytest.mark.slow
def test_sigterm_while_the_ranks_start_stops_both_with_the_sentence(tmp_path: Path, mnist_dir: Path):
    """Before Lightning holds SIGTERM (the ranks meeting, the model being built) the default would
    kill rank 0 alone and leave rank 1 waiting for it forever."""
    command = cli_command("stn.train", "trainer=ddp_sim", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    main = subprocess.Popen(command, cwd=ROOT, env=cli_env(mnist_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not descendants(main.pid):  # rank 1 started
        assert main.poll() is None and time.monotonic() < deadline, "rank 1 never started"
        time.sleep(0.05)
    ranks = descendants(main.pid)
    main.send_signal(signal.SIGTERM)
    _, stderr = main.communicate(timeout=60)
    assert main.returncode == 128 + signal.SIGTERM
    assert (
        "python -m stn.train was stopped (SIGTERM) before it finished" in stderr and "Traceback" not in stderr
    )
    time.sleep(1)
    assert [pid for pid in ranks if _running(pid)] == []  # no rank left waiting


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has: its parent has not reaped it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


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
