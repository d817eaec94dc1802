"""The speed options: a training step that never waits on the host, and options the hardware cannot
run that fall back with one warning or stop with one sentence."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint
from omegaconf import DictConfig, open_dict

from stn.errors import ConfigError
from stn.models.acceleration import compile_mode_for
from stn.models.graphed_step import StaticShapeStep
from stn.utils.checks import cpu_has_native_bf16
from stn.utils.instantiators import build_model, instantiate_group

from .conftest import SMALL, check_and_build, compose_config, eval_command, run, run_rejected, small_run

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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert "test/acc" in eval_command(
        last, "model.compile=false", run_dir=tmp_path / "eval", data_dir=mnist_dir
    )


# -- the graphed training step (training_step=graphed): on a CPU the same padded arithmetic, eagerly --


class LearningRateAtValidation(L.Callback):
    """The learning rate each validation (and so each checkpoint) sees."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_validation_end(self, trainer, pl_module):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(
    tmp_path: Path, mnist_dir: Path, *overrides: str, stop_after: int = 2, ckpt_path: Path | None = None
) -> tuple[L.LightningModule, L.Trainer, list[float]]:
    """Two epochs of 640 training images (10 batches an epoch) from seed 0, on the CPU, stopped
    after `stop_after`; the last checkpoint is `tmp_path`/last.ckpt."""
    cfg = small_run(compose_config("train.yaml", list(overrides)), tmp_path, mnist_dir)
    with open_dict(cfg):
        cfg.data.train_subset = 640
        cfg.trainer.max_epochs = 2
        cfg.trainer.limit_val_batches = 1
    L.seed_everything(0)
    rates = LearningRateAtValidation()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1, monitor=None)
    stop = LambdaCallback(
        on_train_epoch_end=lambda trainer, _: setattr(
            trainer, "should_stop", trainer.current_epoch + 1 >= stop_after
        )
    )
    trainer = instantiate(
        cfg.trainer, callbacks=[rates, checkpoint, stop], logger=False, enable_progress_bar=False
    )
    model = build_model(cfg)  # training_step=graphed: the graphed step's subclass
    trainer.fit(model, datamodule=instantiate(cfg.data), ckpt_path=ckpt_path)
    return model, trainer, rates.rates


@pytest.mark.parametrize("overrides", [[], ["model/scheduler=onecycle", "model.scheduler_interval=step"]])
def test_graphed_step_makes_the_same_updates_as_the_automatic_step(
    tmp_path: Path, mnist_dir: Path, overrides: list[str]
):
    automatic, automatic_trainer, automatic_rates = _fit(tmp_path / "a", mnist_dir, *overrides)
    with pytest.warns(
        UserWarning, match="training_step=graphed replays CUDA graphs, which need a CUDA device"
    ):
        # lists of 3 batches: 3, 3, 3 and 1 an epoch
        graphed, graphed_trainer, graphed_rates = _fit(
            tmp_path / "g", mnist_dir, *overrides, GRAPHED, "data.batches_per_call=3"
        )
    assert graphed_trainer.global_step == automatic_trainer.global_step == 20
    assert graphed_rates == automatic_rates  # the schedule stepped at the same points
    for name, weight in automatic.state_dict().items():
        torch.testing.assert_close(graphed.state_dict()[name], weight, rtol=0, atol=1e-6, msg=name)
    for key in ("train/loss", "train/acc", "val/acc"):
        torch.testing.assert_close(
            graphed_trainer.callback_metrics[key], automatic_trainer.callback_metrics[key]
        )


@pytest.mark.filterwarnings("ignore:training_step=graphed replays CUDA graphs")
def test_a_graphed_run_resumes_where_it_stopped(tmp_path: Path, mnist_dir: Path):
    graphed = (GRAPHED, "data.batches_per_call=4", "model/scheduler=onecycle")
    _, whole, whole_rates = _fit(tmp_path / "whole", mnist_dir, *graphed)
    _fit(tmp_path / "first", mnist_dir, *graphed, stop_after=1)  # stopped after its first epoch
    _, resumed, resumed_rates = _fit(
        tmp_path / "resumed", mnist_dir, *graphed, ckpt_path=tmp_path / "first/last.ckpt"
    )
    assert resumed.global_step == whole.global_step == 20
    assert resumed_rates == whole_rates[1:]  # the second epoch at the same learning rate


def test_a_partial_batch_padded_to_the_static_shape_has_the_unpadded_gradient():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))  # no dropout: deterministic
    step = StaticShapeStep(network, network.parameters())
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    step(images, labels)  # a full batch sets the static shape
    partial_images, partial_labels = torch.randn(24, 1, 28, 28), torch.randint(0, 10, (24,))
    loss = step(partial_images, partial_labels)
    padded_gradients = [p.grad.clone() for p in network.parameters()]
    network.zero_grad(set_to_none=True)
    logits = network(partial_images)
    expected = torch.nn.functional.cross_entropy(logits, partial_labels)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    for padded, unpadded in zip(padded_gradients, (p.grad for p in network.parameters()), strict=True):
        torch.testing.assert_close(padded, unpadded)
    # the epoch's metrics count the 88 real images only
    with torch.no_grad():
        all_logits = network(torch.cat([images, partial_images]))
    all_labels = torch.cat([labels, partial_labels])
    epoch_loss, epoch_accuracy = step.epoch_metrics()
    torch.testing.assert_close(epoch_loss, torch.nn.functional.cross_entropy(all_logits, all_labels))
    torch.testing.assert_close(epoch_accuracy, (all_logits.argmax(1) == all_labels).float().mean())
    assert step.epoch_metrics() is None  # a fresh start for the next epoch


GRAPHED = "training_step=graphed"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batches_per_call=4"], "data.batches_per_call=4 needs training_step=graphed"),
        ([GRAPHED, "model.compile=true"], "allowed false with training_step=graphed"),
        (
            [GRAPHED, "trainer.gradient_clip_val=1.0"],
            "trainer.gradient_clip_val must be null with " + GRAPHED,
        ),
        ([GRAPHED, "trainer=ddp_sim"], "trainer.strategy=ddp with " + GRAPHED),
        (
            [GRAPHED, "data.batches_per_call=0"],
            "data.batches_per_call=0 is out of range: allowed integers >= 1",
        ),
        (
            [GRAPHED, "data.batches_per_call=2", "data.fast_path=false"],
            "data.batches_per_call=2 is out of range: allowed 1 with fast_path=false",
        ),
    ],
)
def test_graphed_step_options_that_cannot_work_together_are_rejected(overrides: list[str], message: str):
    with pytest.raises(ConfigError) as error:
        _checked(*overrides)
    assert message in str(error.value)
