"""Test a checkpoint: `python -m stn.eval ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt`.

When the checkpoint sits in a run folder of this project, the model config that trained it is read
from that run's `.hydra/config.yaml`, so `model=` need not be repeated.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from stn.errors import ConfigError, user_errors_reported
from stn.utils.checks import check_config
from stn.utils.instantiators import build, instantiate_group
from stn.utils.runs import RUN_CONFIG, saved_config
from stn.utils.sweep_checks import check_single_run_keys

log = logging.getLogger(__name__)

SPEED_KEYS = ("channels_last", "compile", "compile_mode")


def run_config(checkpoint: Path) -> DictConfig | None:
    """The config of the run that wrote `checkpoint` (<run>/checkpoints/x.ckpt): the run's own
    record (<run>/run_config/), else its `.hydra/`; None outside a run folder."""
    run_dir = checkpoint.resolve().parent.parent
    for record in (str(RUN_CONFIG), ".hydra"):
        if (run_dir / record / "config.yaml").is_file():
            return saved_config(run_dir, record)
    return None


def _test(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule, checkpoint: Path
) -> None:
    try:
        trainer.test(model, datamodule=datamodule, ckpt_path=str(checkpoint))
    except RuntimeError as error:
        if "state_dict" not in str(error):
            raise
        raise ConfigError(
            f"{checkpoint} does not fit this model config ({str(error).splitlines()[0]}); without its run "
            "folder the model it was trained with is not known: pass it, e.g. model=cnn or model=stn_tps"
        ) from None


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError("ckpt_path is required: python -m stn.eval ckpt_path=<run>/checkpoints/<name>.ckpt")
    checkpoint = Path(str(cfg.ckpt_path))
    if not checkpoint.is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} is not a checkpoint file")
    saved = run_config(checkpoint)
    if saved is not None and cfg.get("model_from_run", True):
        log.info("Using the model config of the run that wrote %s", checkpoint)
        speed = {key: cfg.model[key] for key in SPEED_KEYS if key in cfg.model}
        cfg.model = saved.model
        cfg.model.update(speed)  # how to run fast is this machine's choice, not the run's
        for key in ("mean", "std"):
            cfg.data[key] = saved.data.get(key, cfg.data[key])
    check_config(cfg)
    datamodule = build(cfg, "data")
    model = build(cfg, "model")
    trainer: L.Trainer = build(cfg, "trainer", logger=instantiate_group(cfg.get("logger")))
    _test(trainer, model, datamodule, checkpoint)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    log.info("Test metrics of %s:\n%s", checkpoint, json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval.yaml")
def main(cfg: DictConfig) -> float | None:
    with user_errors_reported():
        metrics = evaluate(cfg)
    return metrics.get("test/acc")


if __name__ == "__main__":
    check_single_run_keys(Path(__file__).resolve().parents[1] / "conf", "eval.yaml", sys.argv[1:])
    main()
