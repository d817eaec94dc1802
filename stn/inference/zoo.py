"""The model zoo's bookkeeping: turn a finished run into a zoo entry (`python -m stn.zoo add`, its
command line in stn/zoo.py).

`add` writes zoo/<name>.safetensors (the network's state dict: no pickle, no Lightning), zoo/<name>.yaml
(the model and data config it was trained with) and the manifest entry: the command that trained
it, both files' sha256 and size, the parameter count, the run's own test accuracy, and the test
accuracy of the zoo copy itself, measured here on the full test set of its data (what
tests/test_predict.py checks it still scores). Models are loaded with `stn.loading.zoo_model`.
"""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import date
from pathlib import Path

from omegaconf import OmegaConf

from stn.errors import Allowed, UserError, check_value
from stn.loading import (
    MANIFEST,
    ZOO_DIR,
    TrainedModel,
    checkpoint_model,
    run_config,
    sha256,
    zoo_config,
    zoo_files_model,
    zoo_manifest,
)
from stn.runs.reading import RunFolder
from stn.utils.files import write_atomically

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run tested: its top-1 `epoch_*.ckpt` (conf/callbacks/model_checkpoint.yaml)."""
    candidates = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    if len(candidates) != 1:
        raise UserError(f"expected one best checkpoint in {run_dir / 'checkpoints'}, found {len(candidates)}")
    return candidates[0]


def accuracy_on_test_set(trained: TrainedModel, data_dir: Path) -> float:
    """A zoo model's accuracy on the full test set of its data, on this machine's CPU."""
    datamodule = trained.datamodule(data_dir=str(data_dir))
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    trainer.test(trained.module, datamodule=datamodule, verbose=False)
    return float(trainer.callback_metrics["test/acc"])


def _check_add(name: str, run_dir: Path, data_dir: Path, zoo_dir: Path, overwrite: bool) -> None:
    """Every user error of `add`, before anything is written."""
    file_name = Allowed(lambda v: NAME.fullmatch(v), "letters, digits, _ and -", f"a file name in {zoo_dir}")
    check_value("name", name, file_name)
    if name in zoo_manifest(zoo_dir) and not overwrite:
        raise UserError(f"the zoo already has {name}; choose another name, or pass --overwrite to replace it")
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir} is not a finished run folder (no metrics.json)")
    if not (Path(data_dir) / "MNIST" / "raw").is_dir():
        raise UserError(f"--data-dir {data_dir} holds no MNIST/raw/ (the zoo copy is scored on its test set)")


def add(name: str, run_dir: Path, data_dir: Path, zoo_dir: Path = ZOO_DIR, overwrite: bool = False) -> dict:
    """Add `run_dir`'s best checkpoint to the zoo as `name`. All of it or nothing: the files are
    written to temporary names, scored, then renamed, and the manifest is written once, last."""
    import torch
    from safetensors.torch import save_file

    _check_add(name, run_dir, data_dir, zoo_dir, overwrite)
    run = RunFolder(run_dir)
    run_metrics = run.metrics
    if "test/acc" not in run_metrics:
        raise UserError(f"{run_dir / 'metrics.json'} has no test/acc")
    checkpoint = best_checkpoint(run_dir)
    trained = checkpoint_model(checkpoint)
    threads = OmegaConf.select(run.config(), "num_threads") or torch.get_num_threads()  # the run's own
    finished = date.fromtimestamp((run_dir / "metrics.json").stat().st_mtime).isoformat()
    zoo_dir.mkdir(parents=True, exist_ok=True)
    weights, config = zoo_dir / f"{name}.safetensors", zoo_dir / f"{name}.yaml"
    partial_weights, partial_config = (path.with_name(f".{path.name}.partial") for path in (weights, config))
    try:
        state = {key: value.contiguous() for key, value in trained.network.state_dict().items()}
        save_file(state, str(partial_weights), metadata={"name": name})
        partial_config.write_text(OmegaConf.to_yaml(zoo_config(run_config(checkpoint))))
        test_acc = accuracy_on_test_set(zoo_files_model(name, partial_weights, partial_config), data_dir)
        entry = {
            "weights": weights.name,
            "config": config.name,
            "sha256": sha256(partial_weights),
            "config_sha256": sha256(partial_config),
            "bytes": partial_weights.stat().st_size,
            "parameters": sum(value.numel() for value in state.values()),
            "data": run.choices.get("data", ""),
            "canvas": trained.canvas,
            "command": "python -m stn.train " + " ".join(run.overrides),
            "run_test_acc": round(float(run_metrics["test/acc"]), 6),
            "trained_on": f"{platform.machine()}, {threads} CPU thread{'s' if threads != 1 else ''}, "
            f"torch {torch.__version__}, {finished}",
            "test_acc": round(test_acc, 6),  # of the zoo copy, as loaded
        }
        os.replace(partial_weights, weights)
        os.replace(partial_config, config)
    finally:
        for partial in (partial_weights, partial_config):
            partial.unlink(missing_ok=True)
    manifest = zoo_manifest(zoo_dir)
    manifest[name] = entry
    write_manifest(manifest, zoo_dir)
    return entry


def write_manifest(manifest: dict, zoo_dir: Path) -> None:
    ordered = {name: manifest[name] for name in sorted(manifest)}
    write_atomically(zoo_dir / MANIFEST, json.dumps({"models": ordered}, indent=2) + "\n")
