"""What a training step of each RTS model costs, side by side: the tutorial-sized models against
the paper's (model=paper_cnn, paper_stn, paper_ic_stn), so a study's length can be planned.

    python -m benchmarks.paper_cost --steps 10 --repeats 3
    python -m benchmarks.paper_cost --batch 64 --device cuda     # the RTS study's recipe on a GPU

Each model trains `steps` optimizer steps (forward, backward, SGD) on batches of 256 random 42x42
inputs, the models taking turns for `repeats` rounds (a noisy machine slows them alike); prints the
median time per step, the ratio to model=cnn and the estimated time of one RTS epoch (55,000
training images in batches of `--batch`). Random inputs: the cost of a step does not depend on
what the pixels are.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from stn.environment import set_up
from stn.models import parameter_counts
from stn.paths import CONF_DIR

MODELS = ("cnn", "stn", "ic_stn", "paper_cnn", "paper_stn", "paper_ic_stn")
TRAIN_IMAGES = 55_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    images = torch.randn(args.batch, 1, 42, 42, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    built = {}
    set_up()  # the resolvers the configs read
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        for name in MODELS:
            model_cfg = compose("train.yaml", overrides=["data=mnist_rts", f"model={name}"]).model
            module = instantiate(model_cfg).to(device)
            built[name] = (module, torch.optim.SGD(module.parameters(), lr=0.01))
    times: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(args.repeats):
        for name, (module, optimizer) in built.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(module(images), labels).backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()  # the steps are queued: wait for them before reading the clock
            times[name].append((time.perf_counter() - start) / args.steps)
    reference = statistics.median(times["cnn"])
    print(f"| model | parameters | ms / step (batch {args.batch}) | x model=cnn | one RTS epoch |")
    print("| --- | --- | --- | --- | --- |")
    for name in MODELS:
        step = statistics.median(times[name])
        print(
            f"| `{name}` | {parameter_counts(built[name][0].net)} | {1000 * step:.0f} | "
            f"{step / reference:.2f} | {TRAIN_IMAGES / args.batch * step / 60:.1f} min |"
        )


if __name__ == "__main__":
    main()
