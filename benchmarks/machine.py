"""One line describing the machine a benchmark ran on, for the README tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")


def describe_machine() -> str:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU only, {os.cpu_count()} cores"
    return f"{platform.machine()} {device}; torch {torch.__version__}; Python {platform.python_version()}"


def describe_cpu() -> str:
    """The CPU's model name and which of the flags that decide bfloat16's speed it reports."""
    name, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            field, _, value = line.partition(":")
            if field.strip() == "model name":
                name = value.strip()
            elif field.strip() == "flags":
                flags = set(value.split())
                break
    shown = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in BF16_FLAGS)
    return f"CPU: {name} ({shown})"
