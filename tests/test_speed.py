"""The speed options: a training step that never waits on the host, and options the hardware cannot
run that fall back with one warning or stop with one sentence."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from stn.errors import ConfigError
from stn.models.acceleration import compile_mode_for
from stn.utils.checks import cpu_has_native_bf16
from stn.utils.instantiators import instantiate_group

from .conftest import check_and_build, compose_config, evaluate, run_rejected
from .test_train import SMALL, run

# every way Python code reads a tensor's value on the host; on a GPU each one waits for the device
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__")


class HostReadTrap(L.Callback):
    """From the second training batch on, any host read of a tensor between this callback's
    batch-start and batch-end hooks (the training step, backward, the optimizer step, the other
    callbacks' batch-end hooks) raises."""

    def __init__(self) -> None:
        self.originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
        self.trapped_batches = 0

    def _arm(self) -> None:
        for name in HOST_READS:

            def trap(tensor, *args, _name=name, **kwargs):
                raise AssertionError(f"Tensor.{_name} called inside a training step")

            setattr(torch.Tensor, name, trap)
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("error")  # also the syncs C++ ops do on the GPU

    def _disarm(self) -> None:
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx >= 1:
            self._arm()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._disarm()
        if batch_idx >= 1:
            self.trapped_batches += 1

    def on_exception(self, trainer, pl_module, exception):
        self._disarm()


@pytest.mark.parametrize("fast_path", [True, False])
def test_training_step_never_reads_tensors_on_the_host(cfg_train: DictConfig, fast_path: bool):
    with open_dict(cfg_train):
        cfg_train.data.fast_path = fast_path
        cfg_train.trainer.limit_train_batches = 6
        cfg_train.trainer.log_every_n_steps = 1000  # writing the step loss is a read, every N steps
        cfg_train.callbacks.progress_bar.refresh_rate = 1  # the bar refreshes every step
    trap = HostReadTrap()
    trainer = instantiate(
        cfg_train.trainer,
        callbacks=[*instantiate_group(cfg_train.callbacks), trap],
        logger=instantiate_group(cfg_train.logger),
    )
    try:
        trainer.fit(instantiate(cfg_train.model), datamodule=instantiate(cfg_train.data))
    finally:
        trap._disarm()
    assert trap.trapped_batches == 5
    assert 0.0 <= float(trainer.callback_metrics["train/acc"]) <= 1.0  # the metrics still accumulate


def test_the_trap_catches_a_host_read(cfg_train: DictConfig):
    """The test above can fail: a step that calls .item() is caught."""

    class ReadsLoss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            outputs["loss"].item()

    with open_dict(cfg_train):
        cfg_train.trainer.limit_train_batches = 3
    trap = HostReadTrap()
    trainer = instantiate(cfg_train.trainer, callbacks=[ReadsLoss(), trap], logger=False)
    with pytest.raises(AssertionError, match=r"Tensor.item called inside a training step"):
        trainer.fit(instantiate(cfg_train.model), datamodule=instantiate(cfg_train.data))
    trap._disarm()


def _checked(*overrides: str) -> None:
    check_and_build(compose_config("train.yaml", ["trainer.accelerator=cpu", *overrides]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.precision=16-mixed"], "trainer.precision=16-mixed needs a CUDA GPU"),
        (["model.compile_mode=turbo"], "model.compile_mode=turbo is out of range: allowed default | "),
        (["data.num_workers=2"], "data.num_workers=2 is out of range: allowed 0 with data.fast_path=true"),
    ],
)
def test_speed_options_this_machine_cannot_run_are_rejected(overrides: list[str], message: str):
    with pytest.raises(ConfigError) as error:
        _checked(*overrides)
    assert message in str(error.value)


def test_workers_are_fine_on_the_dataloader_path():
    _checked("data.fast_path=false", "data.num_workers=2")


@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU does bf16 natively")
def test_bf16_on_a_cpu_without_it_is_one_sentence(tmp_path: Path, mnist_dir: Path):
    run_rejected(
        "stn.train", *SMALL, "trainer.precision=bf16-mixed", f"hydra.run.dir={tmp_path}", data_dir=mnist_dir,
        message="trainer.precision=bf16-mixed needs native bfloat16, which this CPU",
    )  # fmt: skip


def test_cuda_graphs_without_cuda_fall_back_with_one_warning():
    with pytest.warns(UserWarning, match="uses CUDA graphs, which need a CUDA device") as warnings:
        assert compile_mode_for("reduce-overhead", torch.device("cpu")) == "default"
    assert len(warnings) == 1
    assert compile_mode_for("reduce-overhead", torch.device("cuda")) == "reduce-overhead"


def test_compile_failure_is_one_sentence(tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch):
    # inductor compiles C++ for the CPU with $CXX: a machine without a working compiler
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # no cached kernels
    run_rejected(
        "stn.train", *SMALL, "model.compile=true", f"hydra.run.dir={tmp_path / 'run'}", data_dir=mnist_dir,
        message="model.compile=true, but torch.compile failed on this machine",
    )  # fmt: skip


@pytest.mark.slow
def test_compiled_run_trains_and_its_checkpoint_loads_without_compile(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    run_dir = tmp_path / "run"
    run(
        "stn.train", *SMALL, "model.compile=true", "model.compile_mode=reduce-overhead",
        # 2000 and 200 images end each epoch and the test in a partial batch (a new shape)
        "data.train_subset=2000", "data.test_subset=200", "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}", data_dir=mnist_dir,
    )  # fmt: skip
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] > 0.3
    last = run_dir / "checkpoints" / "last.ckpt"
    assert "test/acc" in evaluate(last, "model.compile=false", run_dir=tmp_path / "eval", data_dir=mnist_dir)
