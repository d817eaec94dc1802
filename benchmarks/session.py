"""Everything the GPU path is measured by, in one command, ending in one table: made for a lent GPU
machine's short lease (one call, under 8 minutes on one H100 / H200), runnable on a CPU with
--quick to check that every part works before the lease.

    python -m benchmarks.session [--quick] [--out DIR] [--jobs 8] [--skip tests] [--budget 540]

--budget (seconds) bounds the whole session: a part gets what is left, and parts that no longer
fit are reported as skipped, so one call on a lent machine always ends with its table.

Parts, each a subprocess whose output goes to <out>/<part>.log (so a part that fails or overruns
does not lose the others):

  throughput   tutorial pipeline vs the project's default path at batch 64, and the graphed step
               (training_step=graphed, with data.batches_per_call=16) (benchmarks.throughput)
  default      `python -m stn.train model=stn trainer.max_epochs=20`: wall, fit, test accuracy;
               then the same with the graphed step
  fast         `python -m stn.train experiment=fast`: wall, fit, test accuracy; then graphed
  startup      `python -m stn.train debug=fdr`: command to exit, one batch of each stage
  scaling      images/s by batch size (benchmarks.scaling)
  sweep        `--multirun hydra/launcher=joblib` with --jobs jobs of experiment=fast on one device:
               their aggregate images/s against one job's
  tests        `python -m pytest -q` (-n 4 where pytest-xdist is installed)

On the lent machine (no registry there): its own torch, lightning, torchmetrics, torchvision and
tensorboard are used, and the rest travels as wheels; README's Performance section has the recipe.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import describe_machine
from stn.paths import ROOT
from stn.runs.reading import saved_config

TRAIN_IMAGES = 55_000
PARTS = ("throughput", "default", "fast", "startup", "scaling", "sweep", "tests")


GRAPHED = ["training_step=graphed", "data.batches_per_call=16"]
DEADLINE = [float("inf")]  # time.perf_counter() by which the session must end (--budget)


def run_part(name: str, command: list[str], out: Path, timeout: float) -> tuple[str, float, int]:
    """Run `command` from the project root with its output in <out>/<name>.log: (output, wall s, rc);
    rc 125 without running it when the session's budget is spent."""
    timeout = min(timeout, DEADLINE[0] - time.perf_counter())
    if timeout < 20:
        print(f"[{name}] skipped: the session's --budget is spent", flush=True)
        return "", 0.0, 125
    print(f"[{name}] $ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        process = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        output, code = process.stdout + process.stderr, process.returncode
    except subprocess.TimeoutExpired as error:  # what it printed until then (always bytes here)
        output = b"".join(part or b"" for part in (error.stdout, error.stderr)).decode(errors="replace")
        code = 124
    wall = time.perf_counter() - start
    (out / f"{name}.log").write_text(output)
    print(f"[{name}] exit {code} after {wall:.1f} s", flush=True)
    return output, wall, code


def failed(name: str, code: int) -> dict[str, str]:
    return {"result": "skipped (--budget spent)" if code == 125 else f"failed (exit {code}, see {name}.log)"}


def train(name: str, overrides: list[str], out: Path, timeout: float) -> dict[str, str]:
    """One `stn.train` run in <out>/runs/<name>: wall, fit and test accuracy."""
    run_dir = out / "runs" / name
    command = [
        sys.executable, "-m", "stn.train", *overrides, f"hydra.run.dir={run_dir}",
        "callbacks.progress_bar.refresh_rate=0",
    ]  # fmt: skip
    _, wall, code = run_part(name, command, out, timeout)
    metrics_file = run_dir / "metrics.json"
    if code == 125:
        return {"result": "skipped (--budget spent)"}
    if code != 0 or not metrics_file.is_file():
        return {"result": f"failed (exit {code}, see {name}.log)"}
    metrics = json.loads(metrics_file.read_text())
    return {
        "wall s": f"{wall:.1f}",
        "fit s": f"{metrics.get('time/fit_seconds', float('nan')):.1f}",
        "test acc %": f"{100 * metrics.get('test/acc', float('nan')):.2f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check every part works (CPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "session")
    parser.add_argument("--jobs", type=int, default=8, help="parallel jobs in the sweep part")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole session")
    args = parser.parse_args()
    DEADLINE[0] = time.perf_counter() + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    # --quick: a few batches of each, so the whole session checks out on 2 CPU cores in minutes
    small = ["data.train_subset=2048", "data.test_subset=512"] if args.quick else []
    epochs = ["trainer.max_epochs=2"] if args.quick else []
    jobs = 2 if args.quick else args.jobs
    results: dict[str, dict[str, str]] = {}

    if "throughput" not in args.skip:
        steps = ["--steps", "40", "--warmup", "5", "--repeats", "1"] if args.quick else ["--repeats", "3"]
        variants = ["--variants", "cuda-graph", "cuda-graph-x16"]
        output, _, code = run_part(
            "throughput", [python, "-m", "benchmarks.throughput", *steps, *variants], args.out, 420
        )
        ratio = re.search(r"c/a = ([\d.]+)x\s+c/b = ([\d.]+)x", output)
        # | pipeline | images/s (median) | all rounds | vs tutorial | vs (c) default |
        rows = re.findall(r"^\| (\(c\)[^|]*) \| (\d+) \| [^|]* \| ([\d.]+)x \|", output, flags=re.M)
        results["throughput, batch 64"] = (
            {"c/b (default vs plain loop)": f"{ratio.group(2)}x"}
            | {f"{name.strip()}": f"{rate} images/s, {versus}x the tutorial" for name, rate, versus in rows}
            if ratio
            else failed("throughput", code)
        )
    if "default" not in args.skip:
        name = "default (2 epochs, --quick)" if args.quick else "default, 20 epochs"
        results[name] = train("default", ["model=stn", *small, *epochs], args.out, 600)
        results[f"{name}, graphed step"] = train(
            "default-graphed", ["model=stn", *GRAPHED, *small, *epochs], args.out, 300
        )
    if "fast" not in args.skip:
        results["experiment=fast"] = train("fast", ["experiment=fast", *small, *epochs], args.out, 300)
        results["experiment=fast, graphed step"] = train(
            "fast-graphed", ["experiment=fast", *GRAPHED, *small, *epochs], args.out, 300
        )
    if "startup" not in args.skip:
        run_dir = args.out / "runs" / "startup"
        _, wall, code = run_part(
            "startup", [python, "-m", "stn.train", "debug=fdr", f"hydra.run.dir={run_dir}"], args.out, 300
        )
        results["start-up (debug=fdr)"] = {"wall s": f"{wall:.1f}"} if code == 0 else failed("startup", code)
    if "scaling" not in args.skip:
        sizes = ["--batch-sizes", "64", "256", "--depths", "2", "--images", "2048"] if args.quick else [
            "--batch-sizes", "64", "256", "1024", "4096", "--depths", "2"]  # fmt: skip
        output, _, code = run_part("scaling", [python, "-m", "benchmarks.scaling", *sizes], args.out, 420)
        rows = re.findall(r"^\| \d+ \| (\d+) \| (\d+) \|", output, flags=re.M)  # | depth | batch | images/s |
        results["scaling, depth 2"] = (
            {f"batch {batch}": f"{rate} images/s" for batch, rate in rows}
            if rows
            else failed("scaling", code)
        )
    if "sweep" not in args.skip:
        sweep_dir = args.out / "runs" / "sweep"
        seeds = ",".join(str(seed) for seed in range(jobs))
        command = [
            python, "-m", "stn.train", "--multirun", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}",
            "experiment=fast", *small, *epochs, f"seed={seeds}", f"hydra.sweep.dir={sweep_dir}",
            "callbacks.progress_bar.refresh_rate=0",
        ]  # fmt: skip
        _, wall, code = run_part("sweep", command, args.out, 600)
        fits = [
            json.loads(metrics.read_text()).get("time/fit_seconds", 0.0)
            for metrics in sweep_dir.glob("*/metrics.json")
        ]
        job = saved_config(next(sweep_dir.glob("*/metrics.json")).parent) if fits else None
        images_per_job = (job.data.train_subset or TRAIN_IMAGES) * job.trainer.max_epochs if job else 0
        results[f"sweep, {jobs} joblib jobs on one device"] = (
            {
                "wall s": f"{wall:.1f}",
                "jobs done": str(len(fits)),
                "aggregate images/s": f"{len(fits) * images_per_job / wall:.0f}",
                "one job's fit images/s (mean)": f"{images_per_job / (sum(fits) / len(fits)):.0f}",
            }  # fmt: skip
            if fits
            else failed("sweep", code)
        )
    if "tests" not in args.skip:
        parallel = ["-n", "4"] if importlib.util.find_spec("xdist") else []
        output, wall, code = run_part(
            "tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *parallel], args.out, 900
        )
        summary = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?) in [\d.]+s", output, flags=re.M)
        results["test suite"] = {
            "wall s": f"{wall:.1f}",
            "result": summary[-1] if summary else f"exit {code}",
        }

    lines = [
        f"Machine: {describe_machine()}; {'--quick' if args.quick else 'full sizes'}",
        "",
        "| part | figures |",
        "| --- | --- |",
    ]
    lines += [
        f"| {part} | {'; '.join(f'{k}: {v}' for k, v in figures.items())} |"
        for part, figures in results.items()
    ]
    table = "\n".join(lines)
    (args.out / "session.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
