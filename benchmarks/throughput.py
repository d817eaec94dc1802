"""Training throughput (images/s) of the STN at batch 64, pipelines side by side in one process:

  (a) the PyTorch STN tutorial's own pipeline and loop: torchvision MNIST with per-sample
      ToTensor + Normalize, DataLoader(batch_size=64, shuffle=True), each batch copied to the
      device, plain SGD; as published (num_workers=4) and with num_workers=0; the faster of the
      two is the reference;
  (b) a plain-PyTorch loop over in-memory tensors on the device, with the options the project's
      default config turns on (channels_last, compile) and its optimizer: the practical ceiling;
  (c) the project's default path: the composed `python -m stn.train` config (datamodule,
      LightningModule, callbacks, logger, Trainer) with a timing callback added; and, with
      --variants, the same with one option changed, to show what each option is worth.

Pipelines are interleaved over --repeats rounds and each reports its median, so a noisy machine
affects all of them alike; the headline is the ratios c/a and c/b.

    python -m benchmarks.throughput [--steps 300] [--warmup 30] [--repeats 3] [--device cpu|cuda]
    python -m benchmarks.throughput --variants no-channels-last dataloader compile
    python -m benchmarks.throughput --variants cuda-graph cuda-graph-x16   # the graphed step
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks.machine import describe_machine
from stn.data import MNIST_MEAN, MNIST_STD, MNISTDataModule
from stn.environment import set_up
from stn.models import ConvClassifier, LocalizationNet, SpatialTransformer, STNClassifier
from stn.models.acceleration import compile_mode_for, to_channels_last
from stn.paths import ROOT
from stn.utils.instantiators import build_model, instantiate_group

BATCH = 64

# (c) with one option changed: name -> overrides on top of the default config
OPTION_OVERRIDES = {
    "no-channels-last": ["model.channels_last=false"],
    "dataloader": ["data.fast_path=false"],
    "compile": ["model.compile=true"],
    "compile-cuda-graphs": ["model.compile=true", "model.compile_mode=reduce-overhead"],
    "cuda-graph": ["training_step=graphed"],
    "cuda-graph-x16": ["training_step=graphed", "data.batches_per_call=16"],
    "bf16": ["trainer.precision=bf16-mixed"],
}

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tutorial_model() -> STNClassifier:
    return STNClassifier(ConvClassifier(), SpatialTransformer(LocalizationNet()))


def time_loop(
    batches: Batches,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    steps: int,
    warmup: int,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda images: images,
) -> float:
    """images/s of training steps over `batches`, timed after `warmup` steps."""
    model.train()
    start = None
    for step, (images, labels) in enumerate(batches):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        if step == warmup + steps:
            break
        images, labels = prepare(images.to(device)), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * BATCH / (time.perf_counter() - start)


def tutorial_pipeline(
    data_dir: Path, num_workers: int, device: torch.device, steps: int, warmup: int
) -> float:
    """(a): the tutorial's dataset, transforms, loader, model and optimizer."""
    dataset = datasets.MNIST(
        data_dir,
        train=True,
        download=True,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]
        ),
    )
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=num_workers)
    model = tutorial_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return time_loop(iter(loader), model, optimizer, device, steps, warmup)


def in_memory_loop(
    datamodule: MNISTDataModule, cfg: DictConfig, device: torch.device, steps: int, warmup: int
) -> float:
    """(b): the same tensors on the device, shuffled and sliced there, with the default config's
    model options and optimizer, and nothing else."""
    dataset = datamodule.train_set.to(device)

    def batches() -> Batches:
        while True:
            order = torch.randperm(len(dataset), device=device)
            for first in range(0, len(order) - BATCH + 1, BATCH):
                yield dataset.batch(order[first : first + BATCH])

    model = tutorial_model().to(device)
    prepare = lambda images: images  # noqa: E731
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
        prepare = to_channels_last
    if cfg.model.compile:
        model.compile(mode=compile_mode_for(cfg.model.compile_mode, device))
    optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
    return time_loop(batches(), model, optimizer, device, steps, warmup, prepare)


class StepTimer(L.Callback):
    """Times training calls warmup .. warmup + steps (synchronising the device at both ends); a
    call is one batch, or a list of them (data.batches_per_call)."""

    def __init__(self, steps: int, warmup: int) -> None:
        self.steps, self.warmup = steps, warmup
        self.start = self.end = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()
        if self.warmup <= batch_idx < self.warmup + self.steps:
            self.images += (
                sum(len(labels) for _, labels in batch) if isinstance(batch, list) else len(batch[1])
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.warmup + self.steps - 1:
            synchronize(pl_module.device)
            self.end = time.perf_counter()

    @property
    def images_per_second(self) -> float:
        return self.images / (self.end - self.start)


def compose_train_config(overrides: list[str], data_dir: Path, output_dir: str) -> DictConfig:
    set_up()  # the resolvers the configs read
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
        cfg.hydra.runtime.output_dir = output_dir
        cfg.data.data_dir = str(data_dir)
    return cfg


def project_path(data_dir: Path, steps: int, warmup: int, overrides: list[str]) -> StepTimer:
    """(c): `python -m stn.train <overrides>` for warmup + steps batches of one epoch, no validation
    (with data.batches_per_call K, as many batches in 1/K as many calls)."""
    with tempfile.TemporaryDirectory() as output_dir:
        cfg = compose_train_config(overrides, data_dir, output_dir)
        per_call = cfg.data.get("batches_per_call", 1)
        steps, warmup = math.ceil(steps / per_call), math.ceil(warmup / per_call)
        with open_dict(cfg):
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
        trainer.fit(build_model(cfg), datamodule=instantiate(cfg.data))
        return timer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="*", default=[], choices=list(OPTION_OVERRIDES))
    parser.add_argument(
        "--overrides", nargs="*", default=[], metavar="'KEY=VALUE ...'",
        help="more (c) rows, each stn.train with these overrides (what the gap to (b) is made of)",
    )  # fmt: skip
    parser.add_argument("--skip-tutorial", action="store_true", help="leave out (a): (b) against (c) alone")
    args = parser.parse_args()
    device = torch.device(args.device)
    accelerator = ["trainer.accelerator=" + ("gpu" if device.type == "cuda" else "cpu")]

    datamodule = MNISTDataModule(data_dir=str(args.data_dir))
    datamodule.prepare_data()
    datamodule.setup("fit")
    default_cfg = compose_train_config(accelerator, args.data_dir, "unused")

    def project(extra: list[str]) -> Callable[[], float]:
        return lambda: (
            project_path(args.data_dir, args.steps, args.warmup, accelerator + extra).images_per_second
        )

    options = ", ".join(
        f"{key}={default_cfg.model[key]}" for key in ("channels_last", "compile", "compile_mode")
    )
    pipelines: dict[str, Callable[[], float]] = {
        "(a) tutorial pipeline, num_workers=4": lambda: tutorial_pipeline(
            args.data_dir, 4, device, args.steps, args.warmup
        ),
        "(a) tutorial pipeline, num_workers=0": lambda: tutorial_pipeline(
            args.data_dir, 0, device, args.steps, args.warmup
        ),
        f"(b) plain loop, in-memory tensors on {device.type} ({options})": lambda: in_memory_loop(
            datamodule, default_cfg, device, args.steps, args.warmup
        ),
        "(c) project default (stn.train)": project([]),
    }
    for variant in args.variants:
        pipelines[f"(c) with {' '.join(OPTION_OVERRIDES[variant])}"] = project(OPTION_OVERRIDES[variant])
    for overrides in args.overrides:
        pipelines[f"(c) with {overrides}"] = project(overrides.split())
    if args.skip_tutorial:
        pipelines = {name: measure for name, measure in pipelines.items() if not name.startswith("(a)")}

    results: dict[str, list[float]] = {name: [] for name in pipelines}
    for round_ in range(args.repeats):
        for name, measure in pipelines.items():
            torch.manual_seed(round_)
            results[name].append(measure())
            print(f"round {round_}: {name}: {results[name][-1]:.0f} images/s", flush=True)

    median = {name: statistics.median(values) for name, values in results.items()}
    tutorial = max((v for k, v in median.items() if k.startswith("(a)")), default=float("nan"))
    ceiling = next(v for k, v in median.items() if k.startswith("(b)"))
    project_default = median["(c) project default (stn.train)"]
    print(
        f"\nMachine: {describe_machine()}; device {device}; batch {BATCH}, {args.steps} timed steps after "
        f"{args.warmup}, median of {args.repeats} interleaved rounds\n"
    )
    print("| pipeline | images/s (median) | all rounds | vs tutorial (best a) | vs (c) default |")
    print("| --- | --- | --- | --- | --- |")
    for name, value in median.items():
        rounds = ", ".join(f"{v:.0f}" for v in results[name])
        print(
            f"| {name} | {value:.0f} | {rounds} | {value / tutorial:.2f}x | {value / project_default:.2f}x |"
        )
    print(f"\nc/a = {project_default / tutorial:.2f}x   c/b = {project_default / ceiling:.2f}x")
    for name, value in median.items():
        if name.startswith("(c) with"):
            print(f"{name}: {value / ceiling:.2f}x of (b)")


if __name__ == "__main__":
    main()
