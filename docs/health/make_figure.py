"""docs/health/transform_health.png: what a healthy and a collapsed transformer look like, from two
real runs (the TensorBoard grid of their last validation epoch and their transform figures).

    python docs/health/make_figure.py [--out docs/health]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stn.pictures import captioned

ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    "data.train_subset=4096", "data.test_subset=512", "trainer.max_epochs=2", "trainer.limit_val_batches=8",
    "callbacks.progress_bar.refresh_rate=0",
]  # fmt: skip
RUNS = {
    "healthy: the default recipe": [],
    "collapsed: model.localization_lr_scale=300 (the localization net's lr 3)": [
        "model.localization_lr_scale=300"
    ],
}
FIGURES = ("scale", "rotation", "translation", "outside_fraction", "background_fraction")


def last_grid(run_dir: Path) -> torch.Tensor:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    encoded = events.Images("val/transformed")[-1].encoded_image_string
    pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "health")
    args = parser.parse_args()
    panels = []
    with tempfile.TemporaryDirectory() as scratch:
        for number, (title, overrides) in enumerate(RUNS.items()):
            run_dir = Path(scratch) / str(number)
            command = [sys.executable, "-m", "stn.train", *SHORT, *overrides, f"hydra.run.dir={run_dir}"]
            print("$", " ".join(command[1:]), flush=True)
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            figures = ", ".join(f"{name} {metrics[f'transform/{name}']:.2f}" for name in FIGURES)
            panels.append(captioned(captioned(last_grid(run_dir), figures), title))
            print(f"  {title}: {figures}; test acc {metrics['test/acc']:.3f}")
    width = max(panel.shape[2] for panel in panels)
    padded = [torch.nn.functional.pad(p, (0, width - p.shape[2], 0, 8), value=1.0) for p in panels]
    picture = (torch.cat(padded, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(args.out / "transform_health.png")
    print(f"wrote {args.out / 'transform_health.png'}")


if __name__ == "__main__":
    main()
