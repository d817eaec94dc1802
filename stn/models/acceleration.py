"""Speed options for a model: channels_last memory layout and torch.compile (with CUDA graphs).

Pure PyTorch. Each option either works on the device it is given, falls back with one clear
warning where the fallback gives the same result (CUDA graphs without CUDA), or stops with
`AccelerationError` naming the config key (a compiler that fails).
"""

from __future__ import annotations

import warnings

import torch

from stn.errors import UserError, first_line

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class AccelerationError(UserError):
    """A speed option that was asked for cannot run on this machine."""


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in NHWC memory order; on CPU this selects the oneDNN convolution kernels."""
    return images.contiguous(memory_format=torch.channels_last)


def compile_mode_for(mode: str, device: torch.device) -> str:
    """The torch.compile mode to use on `device`: CUDA graphs need CUDA, elsewhere the same
    kernels are compiled without them (one warning)."""
    if mode in CUDA_GRAPH_MODES and device.type != "cuda":
        warnings.warn(
            f"model.compile_mode={mode} uses CUDA graphs, which need a CUDA device; the model runs "
            f"on {device.type}, so it is compiled with mode=max-autotune-no-cudagraphs"
            if mode == "max-autotune"
            else f"model.compile_mode={mode} uses CUDA graphs, which need a CUDA device; the model "
            f"runs on {device.type}, so it is compiled with mode=default",
            stacklevel=2,
        )
        return "max-autotune-no-cudagraphs" if mode == "max-autotune" else "default"
    return mode


def compile_failure(error: Exception) -> AccelerationError:
    """The error to raise when the first compiled call fails: one sentence and what to do."""
    first = first_line(error)
    return AccelerationError(
        f"model.compile=true, but torch.compile failed on this machine ({type(error).__name__}: "
        f"{first[:300]}); set model.compile=false to train without it"
    )
