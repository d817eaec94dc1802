"""What a trained transformer does, in the figures the transform-health callback logs: the zoo's
models on the first test digits of their own data (docs/tensorboard.md's "healthy" column).

    python -m benchmarks.transform_health                       # every STN of the zoo, 2000 digits
    python -m benchmarks.transform_health stn_mnist stn_rts --digits 500

Prints a Markdown table: mean scale (with the 5th-95th percentile of single digits), rotation,
translation, outside_fraction and background_fraction, as stn.callbacks.TransformHealth computes
them (the same function) on validation digits during training.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.machine import describe_machine
from stn.callbacks.transform_health import transform_figures
from stn.loading import zoo_model
from stn.paths import ROOT


def figures(name: str, digits: int) -> dict[str, float]:
    trained = zoo_model(name, ROOT / "zoo")
    datamodule = trained.datamodule(data_dir=str(ROOT / "data"), test_subset=digits, download=True)
    datamodule.prepare_data()
    datamodule.setup("test")
    images, _ = datamodule.test_set.batch(slice(0, digits))  # (N, 1, S, S), normalised
    with torch.no_grad():
        per_digit = transform_figures(
            trained.network.eval().transformer, images, trained.mean, trained.std, 0.1
        )
    low, high = torch.quantile(per_digit["scale"], torch.tensor([0.05, 0.95])).tolist()
    return {key: float(value.mean()) for key, value in per_digit.items()} | {"scale_5": low, "scale_95": high}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [
        n for n in json.loads((ROOT / "zoo" / "manifest.json").read_text())["models"] if n.startswith("stn")
    ]
    parser.add_argument("models", nargs="*", default=names)
    parser.add_argument("--digits", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{describe_machine()}; the first {args.digits} test digits of each model's own data\n")
    print("| model | scale (5-95%) | rotation, deg | translation | outside_fraction | background_fraction |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        f = figures(name, args.digits)
        print(
            f"| {name} | {f['scale']:.2f} ({f['scale_5']:.2f}-{f['scale_95']:.2f}) | {f['rotation']:.1f} | "
            f"{f['translation']:.2f} | {f['outside_fraction']:.2f} | {f['background_fraction']:.2f} |"
        )


if __name__ == "__main__":
    main()
