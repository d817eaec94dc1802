"""Training throughput (images/s) of the STN at batch 64, three pipelines side by side in one process:

  (a) the PyTorch STN tutorial's own pipeline and loop: torchvision MNIST with per-sample
      ToTensor + Normalize, DataLoader(batch_size=64, shuffle=True), as published (num_workers=4)
      and with num_workers=0; the faster of the two is the reference;
  (b) a plain-PyTorch loop over pre-normalised in-memory tensors (the practical ceiling);
  (c) the project's default path: the composed `python -m stn.train` config (datamodule,
      LightningModule, callbacks, logger, Trainer) with a timing callback added.

Pipelines are interleaved over --repeats rounds and each reports its median, so a noisy machine
affects all of them alike; the headline is the ratios c/a and c/b.

    python -m benchmarks.throughput [--steps 300] [--warmup 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks.machine import describe_machine
from stn.data import MNIST_MEAN, MNIST_STD, MNISTDataModule
from stn.models import ConvClassifier, LocalizationNet, SpatialTransformer, STNClassifier
from stn.utils.instantiators import instantiate_group

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64


def tutorial_model() -> STNClassifier:
    return STNClassifier(ConvClassifier(), SpatialTransformer(LocalizationNet()))


def time_loop(batches, steps: int, warmup: int) -> float:
    """images/s of SGD steps over `batches` (an iterator of (images, labels)), after `warmup` steps."""
    model = tutorial_model()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    start = None
    for step, (images, labels) in enumerate(batches):
        if step == warmup:
            start = time.perf_counter()
        if step == warmup + steps:
            break
        optimizer.zero_grad()
        loss = F.nll_loss(F.log_softmax(model(images), dim=1), labels)
        loss.backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - start)


def tutorial_pipeline(data_dir: Path, num_workers: int, steps: int, warmup: int) -> float:
    dataset = datasets.MNIST(
        data_dir,
        train=True,
        download=True,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
        ),
    )
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=num_workers)
    return time_loop(iter(loader), steps, warmup)


def in_memory_loop(datamodule: MNISTDataModule, steps: int, warmup: int) -> float:
    images, labels = datamodule.train_set.images, datamodule.train_set.labels

    def batches():
        while True:
            order = torch.randperm(len(labels))
            for first in range(0, len(order) - BATCH + 1, BATCH):
                index = order[first : first + BATCH]
                yield images[index], labels[index]

    return time_loop(batches(), steps, warmup)


class StepTimer(L.Callback):
    """Times training batches warmup .. warmup + steps."""

    def __init__(self, steps: int, warmup: int) -> None:
        self.steps, self.warmup = steps, warmup
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup + self.steps - 1:
            self.end = time.perf_counter()

    @property
    def images_per_second(self) -> float:
        return self.steps * BATCH / (self.end - self.start)


def project_path(data_dir: Path, steps: int, warmup: int, overrides: list[str]) -> float:
    with (
        tempfile.TemporaryDirectory() as output_dir,
        initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")),
    ):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = output_dir
            cfg.hydra.runtime.output_dir = output_dir
            cfg.data.data_dir = str(data_dir)
            cfg.trainer.max_epochs = 1
            cfg.trainer.limit_train_batches = warmup + steps
            cfg.trainer.limit_val_batches = 0
            cfg.trainer.enable_model_summary = False
        HydraConfig().set_config(cfg)
        timer = StepTimer(steps, warmup)
        trainer = instantiate(
            cfg.trainer,
            callbacks=[*instantiate_group(cfg.callbacks), timer],
            logger=instantiate_group(cfg.logger),
        )
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
        return timer.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=["trainer.accelerator=cpu"],
        help="overrides for the project's config (c)",
    )
    args = parser.parse_args()

    datamodule = MNISTDataModule(data_dir=str(args.data_dir))
    datamodule.prepare_data()
    datamodule.setup("fit")
    pipelines = {
        "(a) tutorial pipeline, num_workers=4": lambda: tutorial_pipeline(
            args.data_dir, 4, args.steps, args.warmup
        ),
        "(a) tutorial pipeline, num_workers=0": lambda: tutorial_pipeline(
            args.data_dir, 0, args.steps, args.warmup
        ),
        "(b) plain loop, in-memory tensors": lambda: in_memory_loop(datamodule, args.steps, args.warmup),
        "(c) project default (stn.train)": lambda: project_path(
            args.data_dir, args.steps, args.warmup, args.overrides
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in pipelines}
    for round_ in range(args.repeats):
        for name, measure in pipelines.items():
            torch.manual_seed(round_)
            results[name].append(measure())
            print(f"round {round_}: {name}: {results[name][-1]:.0f} images/s", flush=True)

    median = {name: statistics.median(values) for name, values in results.items()}
    tutorial = max(v for k, v in median.items() if k.startswith("(a)"))
    print(
        f"\nMachine: {describe_machine()}; batch {BATCH}, {args.steps} timed steps after {args.warmup}, "
        f"median of {args.repeats} interleaved rounds\n"
    )
    print("| pipeline | images/s (median) | all rounds | vs tutorial (best a) |")
    print("| --- | --- | --- | --- |")
    for name, value in median.items():
        rounds = ", ".join(f"{v:.0f}" for v in results[name])
        print(f"| {name} | {value:.0f} | {rounds} | {value / tutorial:.2f}x |")
    project, ceiling = median["(c) project default (stn.train)"], median["(b) plain loop, in-memory tensors"]
    print(f"\nc/a = {project / tutorial:.2f}x   c/b = {project / ceiling:.2f}x")


if __name__ == "__main__":
    main()
