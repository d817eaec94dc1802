"""Train (then test) a model: `python -m stn.train model=stn trainer.max_epochs=20`.

Compose the config, check it, instantiate data, model, callbacks, loggers and trainer, fit, test
with the best checkpoint, and return the metric a sweeper optimises.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stn.utils.checks import check_config
from stn.utils.instantiators import instantiate_group, user_errors_reported
from stn.utils.parallel import apply_job_share
from stn.utils.resume import apply_resume_point
from stn.utils.runs import split_override

os.environ.setdefault("STN_ROOT", str(Path(__file__).resolve().parents[1]))
log = logging.getLogger(__name__)


def _floats(metrics: dict) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def parameter_counts(net: torch.nn.Module) -> str:
    """Trainable parameters of the classifier, the transformer and both: comparable models keep
    these close, as the paper does."""
    parts = {name: sum(p.numel() for p in part.parameters()) for name, part in net.named_children()}
    parts["total"] = sum(p.numel() for p in net.parameters())
    return ", ".join(f"{name} {count:,}" for name, count in parts.items())


# the HParams tab's columns besides the sweep's own keys, and its metrics
HPARAMS = (
    "model.optimizer.lr",
    "model.optimizer.weight_decay",
    "model.localization.depth",
    "data.batch_size",
    "trainer.max_epochs",
    "seed",
)
HPARAM_METRICS = ("val/acc_best", "test/acc")


def tensorboard_hparams(cfg: DictConfig, overrides: list[str], choices: dict) -> dict:
    """What TensorBoard's HParams tab shows for this run: the chosen config groups, the usual
    hyperparameters and every key the command line set (so a sweep's parameters are columns)."""
    hparams = {group: choice for group, choice in choices.items() if group in ("data", "model")}
    for key in [*HPARAMS, *(split_override(o)[0] for o in overrides)]:
        if not key or key.startswith("hydra"):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not OmegaConf.is_config(value):
            hparams[key] = value
    return hparams


def _hydra_runtime() -> tuple[DictConfig | None, list[str], dict]:
    if not HydraConfig.initialized():
        return None, [], {}
    hydra_cfg = HydraConfig.get()
    return hydra_cfg, list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices)


def train(cfg: DictConfig) -> dict[str, float | str]:
    """Fit and test as `cfg` says; returns every logged metric (and `best_model_path`) and writes
    them to the run folder's metrics.json."""
    check_config(cfg)
    hydra_cfg, overrides, choices = _hydra_runtime()
    apply_job_share(cfg, hydra_cfg)
    ckpt_path = apply_resume_point(cfg, overrides)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating data <%s>, model <%s>", cfg.data._target_, cfg.model._target_)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    log.info("Parameters: %s", parameter_counts(model.net))
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    hparams = tensorboard_hparams(cfg, overrides, choices)
    for logger in loggers:
        # placeholders at step 0 name the HParams tab's metric columns; the final values follow
        logger.log_hyperparams(hparams, metrics={f"hp/{name}": 0.0 for name in HPARAM_METRICS})

    metrics: dict[str, float | str] = {}
    if cfg.get("train", True):
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics["time/fit_seconds"] = time.perf_counter() - start
        metrics.update(_floats(trainer.callback_metrics))

    if cfg.get("test", True):
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if not best:
            log.warning(
                "No best checkpoint (fast_dev_run or no ModelCheckpoint): testing the current weights"
            )
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(_floats(trainer.callback_metrics))
        metrics["best_model_path"] = best

    if not trainer.is_global_zero:  # DDP: the other ranks hold the same synced metrics
        return metrics
    final = {f"hp/{name}": metrics[name] for name in HPARAM_METRICS if name in metrics}
    for logger in loggers:
        logger.log_metrics(final, step=trainer.global_step)
        logger.finalize("success")
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log.info("Final metrics:\n%s", json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    with user_errors_reported():
        metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
