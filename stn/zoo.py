"""The model zoo's bookkeeping: turn a finished run into a zoo entry, or list the zoo.

    python -m stn.zoo add stn_mnist outputs/<date>/<time>     # the run's best checkpoint
    python -m stn.zoo list

`add` writes zoo/<name>.safetensors (the network's state dict: no pickle, no Lightning), zoo/<name>.yaml
(the model and data config it was trained with) and the manifest entry: the command that trained
it, the weights' sha256 and size, the parameter count, the run's own test accuracy, and the test
accuracy of the zoo copy itself, measured here on the full test set of its data (what
tests/test_zoo.py checks it still scores). Models are loaded with `stn.trained.zoo_model`.
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from stn.trained import (
    MANIFEST,
    ZOO_DIR,
    checkpoint_model,
    run_config,
    sha256,
    zoo_config,
    zoo_manifest,
    zoo_model,
)


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run tested: its top-1 `epoch_*.ckpt` (conf/callbacks/model_checkpoint.yaml)."""
    candidates = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    if len(candidates) != 1:
        raise SystemExit(
            f"error: expected one best checkpoint in {run_dir / 'checkpoints'}, found {len(candidates)}"
        )
    return candidates[0]


def accuracy_on_test_set(name: str, data_dir: Path, zoo_dir: Path = ZOO_DIR) -> float:
    """The zoo model's accuracy on the full test set of its data, on this machine's CPU."""
    trained = zoo_model(name, zoo_dir)
    datamodule = trained.datamodule(data_dir=str(data_dir))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.test(trained.module, datamodule=datamodule, verbose=False)
    return float(trainer.callback_metrics["test/acc"])


def add(name: str, run_dir: Path, data_dir: Path, zoo_dir: Path = ZOO_DIR) -> dict:
    from safetensors.torch import save_file

    checkpoint = best_checkpoint(run_dir)
    trained = checkpoint_model(checkpoint)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    weights = zoo_dir / f"{name}.safetensors"
    state = {key: value.contiguous() for key, value in trained.network.state_dict().items()}
    save_file(state, str(weights), metadata={"name": name})
    (zoo_dir / f"{name}.yaml").write_text(OmegaConf.to_yaml(zoo_config(run_config(checkpoint))))
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    entry = {
        "weights": weights.name,
        "config": f"{name}.yaml",
        "sha256": sha256(weights),
        "bytes": weights.stat().st_size,
        "parameters": sum(value.numel() for value in state.values()),
        "data": str(OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices.data),
        "canvas": trained.canvas,
        "command": "python -m stn.train " + " ".join(str(o) for o in overrides),
        "run_test_acc": round(float(run_metrics["test/acc"]), 6),
        "trained_on": f"{platform.machine()}, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}, {date.today().isoformat()}",
    }
    manifest = zoo_manifest(zoo_dir)
    manifest[name] = entry
    write_manifest(manifest, zoo_dir)
    entry["test_acc"] = round(accuracy_on_test_set(name, data_dir, zoo_dir), 6)  # of the zoo copy, as loaded
    write_manifest(manifest, zoo_dir)
    return entry


def write_manifest(manifest: dict, zoo_dir: Path) -> None:
    ordered = {name: manifest[name] for name in sorted(manifest)}
    (zoo_dir / MANIFEST).write_text(json.dumps({"models": ordered}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser("add", help="a finished run's best checkpoint as a zoo model")
    adding.add_argument("name")
    adding.add_argument("run_dir", type=Path)
    adding.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / "data")
    commands.add_parser("list", help="the zoo's models")
    args = parser.parse_args()
    if args.command == "add":
        print(json.dumps(add(args.name, args.run_dir, args.data_dir), indent=2))
        return
    for name, entry in zoo_manifest().items():
        figures = f"test acc {100 * entry['test_acc']:.2f}%, {entry['parameters']} parameters"
        print(f"{name}: data={entry['data']} ({entry['canvas']}x{entry['canvas']}), {figures}")
        print(f"    {entry['command']}")


if __name__ == "__main__":
    main()
