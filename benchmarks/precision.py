"""What each speed setting is worth for the paper's models on this CPU, side by side in one process:
float32, bfloat16 autocast (what `trainer.precision=bf16-mixed` runs), channels_last and
torch.compile (inductor), alone and combined.

    python -m benchmarks.precision --threads 1 --batch 64 --steps 20 --repeats 5
    python -m benchmarks.precision --models paper_stn --settings fp32 bf16 bf16+cl

Each (model, setting) pair trains `steps` optimizer steps (forward, backward, Adam) on one batch
of real-sized random inputs at the RTS canvas (42x42), after `warmup` steps (compilation
included there); the pairs take turns for `repeats` rounds so that a noisy machine slows all of
them alike, and each reports its median ms per step and its speed against float32 of the same
model. Random inputs: a step's cost does not depend on the pixels. The CPU's model name and its
bfloat16 flags (AMX, AVX512-BF16) are printed first: the figures mean nothing without them.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from benchmarks.machine import describe_cpu, describe_machine
from stn.environment import set_up
from stn.models.acceleration import to_channels_last
from stn.paths import CONF_DIR

MODELS = ("paper_cnn", "paper_stn", "paper_stn_tps")
# name -> (bfloat16 autocast, channels_last, compile)
SETTINGS = {
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "cl": (False, True, False),
    "compile": (False, False, True),
    "bf16+cl": (True, True, False),
    "bf16+compile": (True, False, True),
    "cl+compile": (False, True, True),
    "bf16+cl+compile": (True, True, True),
}


def build(model: str, setting: str, batch: int) -> tuple:
    bf16, channels_last, compiled = SETTINGS[setting]
    torch.manual_seed(0)
    set_up()  # the resolvers the configs read
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        model_cfg = compose("train.yaml", overrides=["data=mnist_rts", f"model={model}"]).model
    net = instantiate(model_cfg).net
    prepare = to_channels_last if channels_last else (lambda images: images)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    step_net = torch.compile(net) if compiled else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    images = prepare(torch.randn(batch, 1, 42, 42))
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(step_net(images), labels)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(describe_machine())
    print(describe_cpu(), flush=True)
    steps = {}
    for model in args.models:
        for setting in args.settings:
            step = build(model, setting, args.batch)
            for _ in range(args.warmup):  # compiles the compiled ones
                step()
            steps[model, setting] = step
    times: dict[tuple[str, str], list[float]] = {pair: [] for pair in steps}
    for _ in range(args.repeats):
        for pair, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[pair].append(1000 * (time.perf_counter() - start) / args.steps)
    print(f"\nbatch {args.batch}, {args.threads} thread(s), median of {args.repeats} rounds of "
          f"{args.steps} steps\n")  # fmt: skip
    print("| model | setting | ms / step (median) | rounds | x float32 |")
    print("| --- | --- | --- | --- | --- |")
    for model in args.models:
        reference = statistics.median(times[model, "fp32"]) if (model, "fp32") in times else None
        for setting in args.settings:
            median = statistics.median(times[model, setting])
            rounds = ", ".join(f"{t:.1f}" for t in times[model, setting])
            speedup = f"{reference / median:.2f}x" if reference else "—"
            print(f"| `{model}` | {setting} | {median:.1f} | {rounds} | {speedup} |")


if __name__ == "__main__":
    main()
