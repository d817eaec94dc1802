"""A trained model, from a run's checkpoint or from the model zoo (`zoo/`): the LightningModule with
its weights, and the model and data config it was trained with (so its canvas and normalisation
are known). The one loader: `stn.eval`, `stn.predict`, `stn.export`, `stn.paper_table` and
`stn.zoo` all use it. Reading is reading data: the config is checked (stn/utils/untrusted.py) and
the weights are read without pickle (a checkpoint with `weights_only`, the zoo as safetensors).

The zoo keeps small models in the repository as safetensors state dicts, each with its config,
its test accuracy, the command that trained it and both files' sha256, in `zoo/manifest.json`;
`zoo_model(name)` checks the hashes before reading either file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from stn.errors import ConfigError, UserError, first_line
from stn.paths import ZOO_DIR
from stn.runs.reading import RUN_CONFIG, saved_config
from stn.utils.files import MAX_CONFIG_BYTES, file_digest, read_text
from stn.utils.instantiators import build, build_model
from stn.utils.untrusted import check_targets, load_untrusted

if TYPE_CHECKING:  # imported where a model is built: `stn.zoo list` and the manifest need neither
    import lightning as L
    import torch

MANIFEST = "manifest.json"
MAX_ZOO_FILE_BYTES = 256 << 20  # a zoo model's weights or config (the largest today: 0.8 MB)
# what a zoo entry keeps of the run's data config: how the images were made, not where they were
DATA_KEYS_DROPPED = (
    "data_dir",
    "train_subset",
    "test_subset",
    "num_workers",
    "pin_memory",
    "batches_per_call",
)


@dataclass
class TrainedModel:
    name: str  # the checkpoint's path or the zoo name
    module: L.LightningModule  # on the CPU, in eval mode
    model_config: DictConfig
    data_config: DictConfig

    @property
    def network(self) -> torch.nn.Module:
        """The pure-PyTorch network (stn.models.STNClassifier)."""
        return self.module.net

    @property
    def canvas(self) -> int:
        """The side of the square images it was trained on (28; 42 RTS; 60 TC)."""
        return int(self.data_config.get("image_size", 28))

    def data(self, **overrides: Any) -> DictConfig:
        """The data config it was trained on, with this machine's settings (data_dir, subsets) over it."""
        return OmegaConf.merge(self.data_config, overrides)

    def datamodule(self, **overrides: Any) -> L.LightningDataModule:
        """The datamodule of the data it was trained on (its canvas, its distortion, its test set)."""
        return build(OmegaConf.create({"data": self.data(**overrides)}), "data")

    @property
    def mean(self) -> float:
        return float(self.data_config.mean)

    @property
    def std(self) -> float:
        return float(self.data_config.std)


def run_config(checkpoint: Path) -> DictConfig | None:
    """The config of the run that wrote `checkpoint` (<run>/checkpoints/x.ckpt): the run's own
    record (<run>/run_config/), else its `.hydra/`; None outside a run folder."""
    run_dir = checkpoint.resolve().parent.parent
    for record in (str(RUN_CONFIG), ".hydra"):
        if (run_dir / record / "config.yaml").is_file():
            return saved_config(run_dir, record)
    return None


GRAPHED_MODULE_NAME = "GraphedSTNLitModule"


def _built(model_config: DictConfig, data_config: DictConfig, source: Path) -> L.LightningModule:
    """The LightningModule of `model_config` (read from `source`), its interpolations (the data's
    canvas, mean and std) resolved against `data_config`, built only from the project's classes."""
    cfg = OmegaConf.create({"model": model_config, "data": data_config})
    try:
        OmegaConf.resolve(cfg)
    except Exception as error:  # a broken interpolation
        first = first_line(error)
        raise ConfigError(f"{source} cannot be resolved ({first})") from None
    check_targets(cfg, source)
    cfg.model.compile = False  # speed options of the training machine, not of this one
    if str(cfg.model.get("_target_", "")).endswith(GRAPHED_MODULE_NAME):  # training_step=graphed
        cfg.model._target_ = "stn.models.lit_module.STNLitModule"  # the same network; it predicts as one
    cfg.model.pop("cuda_graph", None)  # the graphed step's switch, in configs written before it was a class
    return build_model(cfg)


def load_weights(module: torch.nn.Module, checkpoint: Path, why: str = "") -> None:
    """`checkpoint`'s weights into `module`; one sentence if they do not fit (`why` says what to do)."""
    from stn.utils.checkpoints import read_checkpoint

    try:
        module.load_state_dict(read_checkpoint(checkpoint)["state_dict"])
    except RuntimeError as error:
        raise UserError(f"{checkpoint} does not fit this model config ({first_line(error)}){why}") from None


def checkpoint_model(checkpoint: Path) -> TrainedModel:
    """The model that wrote `checkpoint`, a file in a run folder of this project."""
    if not checkpoint.is_file():
        raise ConfigError(f"ckpt_path={checkpoint} is not a checkpoint file")
    saved = run_config(checkpoint)
    if saved is None:
        raise ConfigError(
            f"ckpt_path={checkpoint} is not in a run folder (<run>/checkpoints/<name>.ckpt beside "
            "<run>/.hydra/config.yaml), so the model it was trained with is not known"
        )
    module = _built(saved.model, saved.data, checkpoint)
    load_weights(module, checkpoint)
    return TrainedModel(str(checkpoint), module.eval(), saved.model, saved.data)


def zoo_manifest(zoo_dir: Path = ZOO_DIR) -> dict[str, dict[str, Any]]:
    """The zoo's entries by name; one sentence if the manifest is not the zoo's JSON."""
    path = zoo_dir / MANIFEST
    if not path.is_file():
        return {}
    text = read_text(path, MAX_CONFIG_BYTES)
    try:
        models = json.loads(text)["models"]
        if not isinstance(models, dict) or not all(isinstance(entry, dict) for entry in models.values()):
            raise TypeError("models is not a mapping of entries")
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise UserError(
            f"{path} is not the zoo's manifest ({type(error).__name__}: {error}); "
            "restore it with `git checkout -- zoo/`"
        ) from None
    return models


def sha256(path: Path) -> str:
    return file_digest(path, "sha256", MAX_ZOO_FILE_BYTES)


def zoo_model(name: str, zoo_dir: Path = ZOO_DIR) -> TrainedModel:
    """The zoo's model `name`, its weights and config checked against the manifest's sha256s."""
    manifest = zoo_manifest(zoo_dir)
    if name not in manifest:
        known = ", ".join(sorted(manifest)) or "none"
        raise ConfigError(f"model_name={name} is not in the zoo ({zoo_dir / MANIFEST}); allowed: {known}")
    entry = manifest[name]
    # every file of the entry, weights and config, is read only if it is the one the manifest hashed
    files = {"weights": "sha256", "config": "config_sha256"}
    for field, hash_field in files.items():
        path = zoo_dir / str(entry.get(field, ""))
        if not entry.get(field) or not path.exists() or path.parent != zoo_dir:
            raise UserError(
                f"zoo model {name}: its {field} file {path} is missing; "
                "restore it with `git checkout -- zoo/`"
            )
        if sha256(path) != entry.get(hash_field):
            raise UserError(
                f"{path} does not match its {hash_field} in {zoo_dir / MANIFEST}; "
                "restore it with `git checkout -- zoo/`"
            )
    return zoo_files_model(name, zoo_dir / entry["weights"], zoo_dir / entry["config"])


def zoo_files_model(name: str, weights: Path, config_file: Path) -> TrainedModel:
    """The model of a zoo entry's two files (its safetensors weights and its config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file  # only where zoo weights are read

    config = load_untrusted(config_file)
    if not isinstance(config, DictConfig) or "model" not in config or "data" not in config:
        raise UserError(f"{config_file} is not a zoo model's config (it needs `model` and `data` nodes)")
    module = _built(config.model, config.data, config_file)
    try:
        module.net.load_state_dict(load_file(weights))
    except (SafetensorError, RuntimeError, OSError) as error:
        first = first_line(error)
        raise UserError(f"{weights} cannot be loaded into its model ({first})") from None
    return TrainedModel(name, module.eval(), config.model, config.data)


def trained_model(cfg: DictConfig) -> TrainedModel:
    """The model an entry point's `ckpt_path` or `model_name` names (exactly one of them)."""
    ckpt_path, model_name = cfg.get("ckpt_path"), cfg.get("model_name")
    if bool(ckpt_path) == bool(model_name):
        known = ", ".join(sorted(zoo_manifest())) or "none yet"
        raise ConfigError(
            "name one model: ckpt_path=<run>/checkpoints/<name>.ckpt or model_name=<zoo name> "
            f"(the zoo has: {known})"
        )
    return checkpoint_model(Path(str(ckpt_path))) if ckpt_path else zoo_model(str(model_name))


def zoo_config(run_config: DictConfig) -> DictConfig:
    """What a zoo entry keeps of a run's resolved config: the model, and the data without the
    machine's paths and the run's subsets."""
    data = OmegaConf.to_container(run_config.data, resolve=True)
    for key in DATA_KEYS_DROPPED:
        data.pop(key, None)
    return OmegaConf.create({"model": OmegaConf.to_container(run_config.model, resolve=True), "data": data})
