"""The CUDA path: the graphed training step, compiled models for whole epochs, training and a device
sweep on a GPU. Skipped on a machine without one (their CPU halves are in test_speed.py)."""

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import open_dict

from stn.models import ConvClassifier, LocalizationNet, SpatialTransformer, STNClassifier
from stn.models.graphed_step import WARMUP_STEPS, StaticShapeStep

from .conftest import SMALL, compose_config, multirun, requires_gpu, run, small_run

pytestmark = requires_gpu

ON_GPU = [*(o for o in SMALL if not o.startswith("trainer.accelerator")), "trainer.accelerator=gpu"]


def test_graph_replays_give_the_eager_gradients():
    torch.manual_seed(0)
    network = STNClassifier(ConvClassifier(dropout=0.0), SpatialTransformer(LocalizationNet())).cuda()
    reference = copy.deepcopy(network)
    step = StaticShapeStep(network, network.parameters())
    sizes = [64] * (WARMUP_STEPS + 3) + [24, 64]  # warm-up, capture, replays, a partial batch, a full one
    for size in sizes:
        images = torch.randn(size, 1, 28, 28, device="cuda")
        labels = torch.randint(0, 10, (size,), device="cuda")
        loss = step(images, labels)
        reference.zero_grad(set_to_none=True)
        expected = F.cross_entropy(reference(images), labels)
        expected.backward()
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-4, atol=1e-5)
        for graphed, eager in zip(network.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(graphed.grad, eager.grad, rtol=1e-3, atol=1e-5)
    assert step.graph is not None  # the later steps were replays


def test_graphed_run_trains_on_the_gpu(tmp_path: Path, mnist_dir: Path):
    run_dir = tmp_path / "run"
    run(
        "stn.train", *ON_GPU, "training_step=graphed", "data.batches_per_call=8", "data.train_subset=2000",
        "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", data_dir=mnist_dir,
    )  # fmt: skip
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] > 0.5


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_two_compiled_models_train_whole_epochs_in_one_process(tmp_path: Path, mnist_dir: Path, mode: str):
    for attempt in range(2):  # the second model must not run on the first one's compiled graphs
        cfg = small_run(compose_config("train.yaml", ["model.compile=true", f"model.compile_mode={mode}"]),
                        tmp_path / str(attempt), mnist_dir)  # fmt: skip
        with open_dict(cfg):
            cfg.trainer.accelerator = "gpu"
            cfg.data.train_subset = 1000  # 15 batches and a partial one
            cfg.data.test_subset = 200
            cfg.trainer.max_epochs = 2
        L.seed_everything(attempt)
        trainer = instantiate(
            cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False
        )
        model = instantiate(cfg.model)
        trainer.fit(model, datamodule=instantiate(cfg.data))
        (scores,) = trainer.test(model, datamodule=instantiate(cfg.data), verbose=False)
        assert scores["test/acc"] > 0.2


def test_the_device_is_a_sweep_axis(tmp_path: Path, mnist_dir: Path):
    overrides = [o for o in SMALL if not o.startswith("trainer.accelerator")]
    _, jobs = multirun(*overrides, "trainer=cpu,gpu", sweep=tmp_path / "sweep", data_dir=mnist_dir)
    assert len(jobs) == 2 and all((job / "metrics.json").is_file() for job in jobs)
