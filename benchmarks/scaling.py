"""Scaling of the project's default training path: images/s and peak memory across batch size and
localization depth, as a Markdown table.

    python -m benchmarks.scaling [--batch-sizes 64 256 1024 4096] [--depths 1 2 3] [--device cpu|cuda]

Each (batch size, depth) runs in a fresh process (so its peak memory is its own) for about
--images training images after a short warm-up, through the same composed `stn.train` config
as benchmarks/throughput.py (c). Peak memory is the process's peak resident set size on CPU and
`torch.cuda.max_memory_allocated` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.machine import describe_machine
from stn.paths import ROOT

TRAIN_IMAGES = 55_000


def measure(batch_size: int, depth: int, images: int, device: str, data_dir: Path) -> dict[str, float]:
    """One configuration, in this process: images/s and peak memory in MiB."""
    from benchmarks.throughput import project_path

    batches_per_epoch = -(-TRAIN_IMAGES // batch_size)
    warmup = min(10, max(2, batches_per_epoch // 5))
    steps = max(4, min(images // batch_size, batches_per_epoch - warmup))
    accelerator = "gpu" if device == "cuda" else "cpu"
    overrides = [
        f"trainer.accelerator={accelerator}",
        f"data.batch_size={batch_size}",
        f"model.localization.depth={depth}",
    ]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timer = project_path(data_dir, steps, warmup, overrides)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    return {"images_per_second": timer.images_per_second, "peak_mib": peak, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--depths", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--images", type=int, default=20_000, help="timed training images per configuration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--one", nargs=2, type=int, metavar=("BATCH", "DEPTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # the child process: measure one configuration, print it as JSON
        print(json.dumps(measure(*args.one, args.images, args.device, args.data_dir)))
        return

    memory = "peak RSS" if args.device == "cpu" else "max_memory_allocated"
    rows = []
    for depth in args.depths:
        for batch_size in args.batch_sizes:
            command = [
                sys.executable, "-m", "benchmarks.scaling", "--one", str(batch_size), str(depth),
                "--images", str(args.images), "--device", args.device, "--data-dir", str(args.data_dir),
            ]  # fmt: skip
            output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            rows.append((depth, batch_size, result))
            print(
                f"depth {depth} batch {batch_size}: {result['images_per_second']:.0f} images/s, "
                f"{memory} {result['peak_mib']:.0f} MiB",
                flush=True,
            )

    print(f"\nMachine: {describe_machine()}; device {args.device}; ~{args.images} timed images each\n")
    print(f"| depth | batch | images/s | vs batch {args.batch_sizes[0]} | {memory} (MiB) |")
    print("| --- | --- | --- | --- | --- |")
    for depth, batch_size, result in rows:
        base = next(r for d, b, r in rows if d == depth and b == args.batch_sizes[0])
        ratio = result["images_per_second"] / base["images_per_second"]
        print(
            f"| {depth} | {batch_size} | {result['images_per_second']:.0f} | {ratio:.2f}x "
            f"| {result['peak_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
