"""Checks on a composed config that no single constructor can make, run before anything is built:
combinations of keys (image sizes, workers with the fast path, the graphed step with what it
replaces), the machine (accelerator,
precision), and the keys of third-party classes and of the entry point itself (the optimizer, the
trainer's epochs, threads). A single value of one of the project's classes is checked where it
enters, in that class (stn/errors.py)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from stn.errors import Allowed, ConfigError, check_value, integers, is_int, numbers, one_of


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


# Lightning's `precision` values (lightning.fabric.connector), so a wrong one is one sentence here
PRECISIONS = (
    "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true", "64",
    "transformer-engine", "transformer-engine-float16",
)  # fmt: skip


def _require(cfg: DictConfig, key: str, allowed: Allowed, required: bool = False) -> None:
    """ConfigError naming `key` unless `allowed` accepts its value; an absent or null value passes
    unless `required`."""
    value = _select(cfg, key)
    parent = key.rpartition(".")[0]
    if value is None and not (required and _select(cfg, parent) is not None):
        return  # unset, or its whole section is (model.optimizer for a config without one)
    check_value(key, value, allowed)


def check_image_sizes(cfg: DictConfig) -> None:
    """The classifier is sized for what it sees: the transformer's output, or the data's canvas."""
    classifier_size = _select(cfg, "model.classifier.image_size")
    if classifier_size is None:
        return
    canvas = _select(cfg, "data.image_size") or 28
    output_size = _select(cfg, "model.transformer.output_size")
    if _select(cfg, "model.localization") is None or output_size is None:
        seen, source = canvas, f"the data's {canvas}x{canvas} canvas (no transformer)"
    else:
        _require(cfg, "model.transformer.output_size", integers(1))
        seen, source = output_size, f"model.transformer.output_size={output_size}"
    if classifier_size != seen:
        raise ConfigError(
            f"model.classifier.image_size={classifier_size} does not match what the classifier sees: "
            f"{source}; leave model.classifier.image_size unset to follow it"
        )


def _accelerator(cfg: DictConfig) -> str:
    return str(_select(cfg, "trainer.accelerator") or "auto").lower()


def check_accelerator(cfg: DictConfig) -> None:
    accelerator = _accelerator(cfg)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} asks for a CUDA GPU, but this machine has none "
            "(torch.cuda.is_available() is False); use trainer=cpu or trainer=default."
        )


def _device_type(cfg: DictConfig) -> str:
    accelerator = _accelerator(cfg)
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def cpu_has_native_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def check_precision(cfg: DictConfig) -> None:
    """Half precision only where the hardware does it natively: emulated bf16 on a CPU runs
    2-3x slower than float32 (measured here), which is never what a speed option is for."""
    precision = str(_select(cfg, "trainer.precision") or "32-true")
    device = _device_type(cfg)
    if precision.startswith("bf16"):
        if device == "cpu" and not cpu_has_native_bf16():
            raise ConfigError(
                f"trainer.precision={precision} needs native bfloat16, which this CPU lacks (no "
                "AVX512-BF16 or AMX); use trainer.precision=32-true"
            )
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"trainer.precision={precision} needs a GPU with bfloat16 (Ampere or newer); use "
                "trainer.precision=16-mixed or 32-true"
            )
    elif precision.startswith("16") and device == "cpu":
        raise ConfigError(f"trainer.precision={precision} needs a CUDA GPU; use trainer.precision=32-true")


def check_graphed_step(cfg: DictConfig) -> None:
    """The graphed training step (training_step=graphed) steps the optimizer itself, once per batch
    of a list (data.batches_per_call): what Lightning would otherwise do around the step is not there."""
    graphed = str(_select(cfg, "model._target_") or "").endswith(".GraphedSTNLitModule")
    batches_per_call = _select(cfg, "data.batches_per_call")
    if is_int(batches_per_call) and batches_per_call > 1 and not graphed:
        raise ConfigError(
            f"data.batches_per_call={batches_per_call} needs training_step=graphed: the graphed step "
            "takes one optimizer step per batch of the list; allowed 1 otherwise"
        )
    if not graphed:
        return
    if _select(cfg, "trainer.gradient_clip_val") is not None:
        raise ConfigError(
            "trainer.gradient_clip_val must be null with training_step=graphed (no clipping inside the graph)"
        )
    _require(
        cfg, "trainer.accumulate_grad_batches", Allowed(lambda v: v == 1, "1 with training_step=graphed")
    )
    full = Allowed(lambda v: str(v) in ("32", "32-true"), "32-true with training_step=graphed")
    _require(cfg, "trainer.precision", full)
    if "ddp" in str(_select(cfg, "trainer.strategy") or ""):
        raise ConfigError(
            f"trainer.strategy={_select(cfg, 'trainer.strategy')} with training_step=graphed: the graph "
            "would replay without DDP's gradient all-reduce; use training_step=automatic"
        )


# what makes a run train at least one batch: Lightning accepts 0 and trains nothing, then tests an
# untrained model and calls it finished
SOME_BATCHES = Allowed(
    lambda v: (is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
    "integers >= 1 or fractions in (0, 1]",
    "0 trains no batch",
)
SOME_STEPS = Allowed(
    lambda v: is_int(v) and (v == -1 or v >= 1), "-1 (no limit) or integers >= 1", "0 trains nothing"
)


def check_model_parts(cfg: DictConfig) -> None:
    """A model with a transformer needs its localization net: `~model.localization` (or null) would
    otherwise train a plain CNN under the transformer model's name."""
    model = _select(cfg, "model")
    if model is None or "classifier" not in model:
        return
    if _select(cfg, "model.transformer") is not None and _select(cfg, "model.localization") is None:
        raise ConfigError(
            "model.localization is missing, but model.transformer is set: the transformer needs its "
            "localization net. For a model without a transformer use model=cnn (or also drop "
            "model.transformer: ~model.transformer)"
        )


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key whose value the run cannot use."""
    check_image_sizes(cfg)
    check_model_parts(cfg)
    _require(cfg, "model.optimizer.lr", numbers(above=0), required=True)
    _require(cfg, "model.optimizer.weight_decay", numbers(0))
    _require(cfg, "model.optimizer.momentum", Allowed(lambda v: numbers(0, 1).test(v) and v < 1, "[0, 1)"))
    _require(cfg, "num_threads", integers(1).or_null())
    _require(cfg, "seed", integers(0, 2**32 - 1).or_null())
    _require(cfg, "trainer.max_epochs", integers(1))
    _require(cfg, "trainer.max_steps", SOME_STEPS)
    _require(cfg, "trainer.limit_train_batches", SOME_BATCHES)
    _require(cfg, "trainer.gradient_clip_val", numbers(0).or_null())
    _require(cfg, "trainer.precision", one_of(*PRECISIONS))
    if _select(cfg, "data.fast_path"):
        _require(
            cfg, "data.num_workers", Allowed(lambda v: v == 0, "0 with data.fast_path=true (no DataLoader)")
        )
    check_accelerator(cfg)
    check_precision(cfg)
    check_graphed_step(cfg)
