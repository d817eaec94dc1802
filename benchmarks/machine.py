"""One line describing the machine a benchmark ran on, for the README tables."""

from __future__ import annotations

import os
import platform

import torch


def describe_machine() -> str:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU only, {os.cpu_count()} cores"
    return f"{platform.machine()} {device}; torch {torch.__version__}; Python {platform.python_version()}"
