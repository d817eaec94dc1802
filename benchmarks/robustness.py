"""Accuracy of trained models on clean MNIST test digits and on the same digits shifted or rotated.

    python -m benchmarks.robustness --models stn_mnist cnn_mnist stn_mnist_aug cnn_mnist_aug \
        --out docs/robustness.md

The stressed sets are made with torchvision's own image functions (`torchvision.transforms.v2.
functional.affine`), not with this project's warps (stn/geometry.py), so a model is not scored on
the very arithmetic it was trained with: each of the 10k test digits shifted by a whole number of
pixels drawn uniformly in [-4, 4] on each axis, or rotated by an angle drawn uniformly in
[-30, 30] degrees (bilinear), from a fixed seed. A model is a zoo name or a checkpoint in a run
folder. Prints a Markdown table and writes it (with this command) to `--out`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.datasets import MNIST
from torchvision.transforms.v2 import functional as TF

from stn.loading import TrainedModel, checkpoint_model, zoo_manifest, zoo_model
from stn.paths import ROOT

SEED = 2026


def stressed_sets(data_dir: Path, max_shift: int = 4, max_degrees: float = 30.0) -> dict[str, tuple]:
    """{name: (uint8 images (N, 1, 28, 28), labels (N,))}: clean, shifted, rotated."""
    test = MNIST(data_dir, train=False, download=True)
    images, labels = test.data[:, None], test.targets  # (N, 1, 28, 28) uint8
    generator = torch.Generator().manual_seed(SEED)
    shifts = torch.randint(-max_shift, max_shift + 1, (len(images), 2), generator=generator)
    angles = (torch.rand(len(images), generator=generator) * 2 - 1) * max_degrees
    shifted = torch.stack(
        [TF.affine(image, angle=0.0, translate=[int(dx), int(dy)], scale=1.0, shear=[0.0, 0.0])
         for image, (dx, dy) in zip(images, shifts, strict=True)]
    )  # fmt: skip
    rotated = torch.stack(
        [TF.rotate(image, float(angle), interpolation=TF.InterpolationMode.BILINEAR)
         for image, angle in zip(images, angles, strict=True)]
    )  # fmt: skip
    return {
        "clean": (images, labels),
        f"shifted ±{max_shift} px": (shifted, labels),
        f"rotated ±{max_degrees:g}°": (rotated, labels),
    }


@torch.no_grad()
def accuracy(model: TrainedModel, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    correct = 0
    for first in range(0, len(images), batch):
        pixels = images[first : first + batch].float() / 255
        logits = model.module((pixels - model.mean) / model.std)
        correct += int((logits.argmax(dim=1) == labels[first : first + batch]).sum())
    return correct / len(images)


def load(name: str) -> TrainedModel:
    return zoo_model(name) if name in zoo_manifest() else checkpoint_model(Path(name))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", required=True, help="zoo names or checkpoint paths")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, help="write the table (with this command) here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    sets = stressed_sets(args.data_dir)
    lines = [
        "| model | " + " | ".join(sets) + " |",
        "| --- |" + " --- |" * len(sets),
    ]
    for name in args.models:
        model = load(name)
        if model.canvas != 28:
            sys.exit(f"error: {name} works on a {model.canvas}x{model.canvas} canvas; these sets are 28x28")
        cells = [f"{100 * accuracy(model, *pair):.2f}%" for pair in sets.values()]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        command = "python -m benchmarks.robustness " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(
            "# Robustness: clean, shifted and rotated test digits\n\n"
            f"Written by `{command}`.\n\n" + (__doc__.split("\n\n", 2)[2]) + "\n" + table
        )


if __name__ == "__main__":
    main()
