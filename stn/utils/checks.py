"""Checks on a composed config, run before anything is built, so bad values stop the run at once
with the key and its allowed range instead of failing inside the first training step."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from stn.models.acceleration import COMPILE_MODES
from stn.models.localization import DEFAULT_CHANNELS, DEFAULT_KERNEL_SIZES, DEFAULT_PADDINGS, max_depth


class ConfigError(ValueError):
    """A config value is outside what the run can use."""


def _select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def _require(cfg: DictConfig, key: str, ok, allowed: str) -> None:
    value = _select(cfg, key)
    if value is not None and not ok(value):
        raise ConfigError(f"{key}={value} is out of range: allowed {allowed}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_localization(cfg: DictConfig) -> None:
    localization = _select(cfg, "model.localization")
    if localization is None or "depth" not in localization:  # no transformer, or not a conv stack
        return
    image_size = localization.get("image_size", 28)
    kernel_sizes = list(localization.get("kernel_sizes", DEFAULT_KERNEL_SIZES))
    paddings = list(localization.get("paddings", DEFAULT_PADDINGS))
    channels = list(localization.get("channels", DEFAULT_CHANNELS))
    if not len(channels) == len(kernel_sizes) == len(paddings):
        raise ConfigError(
            "model.localization.channels, .kernel_sizes and .paddings need one entry per block, got "
            f"{len(channels)}, {len(kernel_sizes)} and {len(paddings)}"
        )
    deepest = max_depth(image_size, kernel_sizes, paddings)
    depth = localization.get("depth")
    if not _is_int(depth) or not 1 <= depth <= deepest:
        raise ConfigError(
            f"model.localization.depth={depth} is out of range: allowed 1..{deepest} for a "
            f"{image_size}x{image_size} input (each block is conv -> maxpool(2), and a deeper stack "
            "shrinks the feature map below 1x1)"
        )


def check_image_sizes(cfg: DictConfig) -> None:
    """The classifier is sized for what it sees: the transformer's output, or the data's canvas."""
    classifier_size = _select(cfg, "model.classifier.image_size")
    if classifier_size is None:
        return
    canvas = _select(cfg, "data.distortion.canvas_size") or 28
    output_size = _select(cfg, "model.transformer.output_size")
    if _select(cfg, "model.localization") is None or output_size is None:
        seen, source = canvas, f"the data's {canvas}x{canvas} canvas (no transformer)"
    else:
        _require(cfg, "model.transformer.output_size", lambda v: _is_int(v) and v >= 1, "integers >= 1")
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


def check_distortion(cfg: DictConfig) -> None:
    """Every [min, max] range of a distorted-MNIST variant is ordered (the generators check the
    rest when they are built)."""
    distortion = _select(cfg, "data.distortion")
    if distortion is None:
        return
    for key, value in distortion.items():
        if OmegaConf.is_list(value) and len(value) == 2 and value[0] > value[1]:
            raise ConfigError(f"data.distortion.{key}={list(value)} is inverted: min must be <= max")
    _require(cfg, "data.fast_path", bool, "true for a distorted variant (generated by the fast path only)")


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key whose value the run cannot use."""
    check_localization(cfg)
    check_image_sizes(cfg)
    check_distortion(cfg)
    _require(cfg, "model.optimizer.lr", lambda v: v > 0, "> 0")
    _require(cfg, "model.optimizer.weight_decay", lambda v: v >= 0, ">= 0")
    _require(cfg, "model.optimizer.momentum", lambda v: 0 <= v < 1, "[0, 1)")
    _require(cfg, "model.localization_lr_scale", lambda v: v >= 0, ">= 0")
    _require(cfg, "data.batch_size", lambda v: _is_int(v) and v >= 1, "integers >= 1")
    _require(cfg, "data.num_workers", lambda v: _is_int(v) and v >= 0, "integers >= 0")
    _require(cfg, "data.val_size", lambda v: _is_int(v) and 1 <= v < 60_000, "1..59999")
    _require(cfg, "data.train_subset", lambda v: _is_int(v) and v >= 1, "integers >= 1 or null")
    _require(cfg, "data.test_subset", lambda v: _is_int(v) and v >= 1, "integers >= 1 or null")
    _require(cfg, "num_threads", lambda v: _is_int(v) and v >= 1, "integers >= 1 or null")
    _require(cfg, "trainer.max_epochs", lambda v: _is_int(v) and (v >= 1 or v == -1), "integers >= 1, or -1")
    if _select(cfg, "data.fast_path"):
        _require(cfg, "data.num_workers", lambda v: v == 0, "0 with data.fast_path=true (no DataLoader)")
    _require(cfg, "model.compile_mode", lambda v: v in COMPILE_MODES, " | ".join(COMPILE_MODES))
    check_accelerator(cfg)
    check_precision(cfg)
