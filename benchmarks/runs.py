"""The benchmarks' one way to train a point: `python -m stn.train` into a named run folder, unless
its metrics.json says it has finished (then it is read, not repeated); an interrupted run goes on
from its last.ckpt. Every benchmark that trains points one by one goes through `train_unless_done`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stn.paths import ROOT


def train_unless_done(
    run_dir: Path, overrides: list[str], log: Path | None = None, threads: int | None = None
) -> tuple[dict | None, int]:
    """(the run's metrics, 0) once it has finished, or (None, the exit status) when it failed.
    Its output goes to `log` (appended), else nowhere; `threads` sets OMP_NUM_THREADS."""
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text()), 0
    command = [
        sys.executable, "-m", "stn.train", *overrides, f"hydra.run.dir={run_dir}",
        "callbacks.progress_bar.refresh_rate=0",
    ]  # fmt: skip
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        command.append("ckpt_path=last")  # an interrupted run: go on from its last epoch
    print("$ python", " ".join(command[1:]), flush=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") if log is not None else open(os.devnull, "w") as output:
        status = subprocess.run(command, cwd=ROOT, env=env, stdout=output, stderr=output).returncode
    if status != 0 or not metrics_file.is_file():
        return None, status or 1
    return json.loads(metrics_file.read_text()), 0
