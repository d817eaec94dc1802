"""Test a checkpoint: `python -m stn.eval ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt`,
or a model of the zoo on the data it was trained on: `python -m stn.eval model_name=stn_mnist`.

When the checkpoint sits in a run folder of this project, the model config that trained it is read
from that run's record (`run_config/config.yaml`, the first start's copy of `.hydra/`; else
`.hydra/config.yaml`: stn.loading.run_config and checkpoint_model, the loader predict, export,
paper_table and the zoo share), so `model=` need not be repeated.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from stn.errors import ConfigError
from stn.loading import checkpoint_model, load_weights, run_config, zoo_model
from stn.loggers import logged_metrics
from stn.runs.stops import stops_reported
from stn.utils.checks import check_config
from stn.utils.files import write_atomically
from stn.utils.instantiators import build, build_model, instantiate_group

log = logging.getLogger(__name__)


def evaluate_zoo_model(cfg: DictConfig) -> dict[str, float]:
    """A zoo model on the test set of the data it was trained on (this machine's data_dir)."""
    trained = zoo_model(str(cfg.model_name))
    keep = {
        key: cfg.data[key]
        for key in ("data_dir", "test_subset", "batch_size", "fast_path")
        if key in cfg.data
    }
    cfg.data = trained.data(**keep)
    cfg.model = trained.model_config
    check_config(cfg)
    return _test(cfg, trained.module, f"zoo model {cfg.model_name}")


def _test(cfg: DictConfig, model: L.LightningModule, what: str) -> dict[str, float]:
    """Test `model` on the test set `cfg.data` names, log the metrics and return them."""
    datamodule = build(cfg, "data")
    trainer: L.Trainer = build(cfg, "trainer", logger=instantiate_group(cfg.get("logger")))

    def sentence(stopped: signal.Signals) -> str:
        return f"the test of {what} was stopped ({stopped.name}): nothing was written; run the command again"

    with stops_reported(sentence):
        trainer.test(model, datamodule=datamodule)
    metrics = logged_metrics(trainer)
    log.info("Test metrics of %s:\n%s", what, json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("model_name"):
        if cfg.get("ckpt_path"):
            raise ConfigError("name one model: ckpt_path=<checkpoint> or model_name=<zoo name>, not both")
        return evaluate_zoo_model(cfg)
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError(
            "ckpt_path is required: python -m stn.eval ckpt_path=<run>/checkpoints/<name>.ckpt "
            "(or model_name=<zoo name>)"
        )
    checkpoint = Path(str(cfg.ckpt_path))
    if not checkpoint.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} is not a checkpoint file")
    if run_config(checkpoint) is not None and cfg.get("model_from_run", True):
        log.info("Using the model config of the run that wrote %s", checkpoint)
        trained = checkpoint_model(checkpoint)  # the one loader: checked config, weights_only
        cfg.model = trained.model_config
        for key in ("mean", "std"):
            cfg.data[key] = trained.data_config.get(key, cfg.data[key])
        check_config(cfg)
        model = trained.module
    else:  # a checkpoint without its run folder: the model config is this command's
        check_config(cfg)
        model = build_model(cfg)
        load_weights(
            model, checkpoint,
            why="; without its run folder the model it was trained with is not known: pass it, "
            "e.g. model=cnn or model=stn_tps",
        )  # fmt: skip
    return _test(cfg, model, str(checkpoint))


def eval_task(cfg: DictConfig) -> float | None:
    """What `python -m stn.eval` runs: the test, then its record in the run folder: metrics.json and
    evaluated.yaml, the model and data config that were tested (a zoo model's or a run's own, not
    the command's defaults that Hydra's .hydra/config.yaml holds)."""
    metrics = evaluate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    tested = OmegaConf.create({
        "model": OmegaConf.to_container(cfg.model, resolve=True),  # resolved where they stand
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "ckpt_path": cfg.get("ckpt_path"), "model_name": cfg.get("model_name"),
    })  # fmt: skip
    write_atomically(output_dir / "evaluated.yaml", OmegaConf.to_yaml(tested))
    return metrics.get("test/acc")
