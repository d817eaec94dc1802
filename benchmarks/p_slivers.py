"""Where a P-trained model's test errors fall: against how much of each digit the distortion left.

    python -m benchmarks.p_slivers outputs/rts_study/P_paper_cnn_<recipe>_e16_s0 [more run folders]

P (stn.data.distortions.Projective) moves the four corners of a scaled-down digit at random; a
corner pulled far enough squeezes the digit into a sliver. For each run folder this scores the
run's best checkpoint on the run's own fixed P test set, and splits the test digits by the ink
the distortion left them (distorted ink / original ink / drawn scale squared): below 0.3 (the
slivers), 0.3-0.5, and 0.5 or more. If most errors are slivers, the error floor is the data's,
not the model's. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from benchmarks.machine import describe_machine
from stn.data.mnist import DISTORTION_CHUNK
from stn.inference.zoo import best_checkpoint
from stn.loading import checkpoint_model
from stn.paths import ROOT

BINS = ((0.0, 0.3), (0.3, 0.5), (0.5, float("inf")))  # ink left: slivers, squeezed, the rest


def errors_and_ink_left(run_dir: Path, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) whether the run's best checkpoint gets each digit of its fixed test set wrong, and
    (N,) the ink the distortion left each digit; the test set is redrawn exactly as the datamodule
    draws it (same chunks, same generator), so the drawn scales are known."""
    trained = checkpoint_model(best_checkpoint(run_dir))
    datamodule = trained.datamodule(data_dir=str(data_dir))
    datamodule.prepare_data()
    datamodule.setup("test")
    test_set = datamodule.test_set
    digits = MNIST(str(data_dir), train=False).data[: len(test_set), None].float() / 255  # (N, 1, 28, 28)
    generator = torch.Generator().manual_seed(datamodule.test_seed)
    images, scales = [], []
    for first in range(0, len(digits), DISTORTION_CHUNK):
        distorted, params = datamodule.distortion(digits[first : first + DISTORTION_CHUNK], generator)
        images.append(distorted)
        scales.append(params["scale"])
    pixels = torch.cat(images).mul(255).round().clamp(0, 255).to(torch.uint8)
    if not torch.equal(pixels, test_set.images):
        raise SystemExit(f"{run_dir}: could not redraw its test set (the distortion's code changed?)")
    left = pixels.float().div(255).sum((1, 2, 3)) / digits.sum((1, 2, 3)) / torch.cat(scales) ** 2
    normalised, labels = test_set.batch(slice(None))
    with torch.no_grad():
        predicted = torch.cat([trained.network(chunk).argmax(1) for chunk in normalised.split(1000)])
    return predicted != labels, left


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished P run folders")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(describe_machine())
    names = [f"ink left {low}-{high}" if high < float("inf") else f"ink left >= {low}" for low, high in BINS]
    print(
        "| run | test error % | "
        + " | ".join(f"{name}: digits, error %" for name in names)
        + " | errors that are slivers |"
    )
    print("| --- " * (len(BINS) + 3) + "|")
    for run_dir in args.runs:
        wrong, left = errors_and_ink_left(run_dir, args.data_dir)
        cells = []
        for low, high in BINS:
            inside = (left >= low) & (left < high)
            cells.append(f"{int(inside.sum())}, {100 * wrong[inside].float().mean():.1f}")
        slivers = 100 * wrong[left < BINS[0][1]].sum() / wrong.sum()
        error = 100 * wrong.float().mean()
        print(f"| {run_dir.name} | {error:.2f} | {' | '.join(cells)} | {slivers:.0f}% |")


if __name__ == "__main__":
    main()
