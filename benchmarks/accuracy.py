"""Test accuracy and wall time of full training runs over several seeds, as a Markdown table.

    python -m benchmarks.accuracy                       # stn (default recipe), cnn, tutorial; seeds 0 1 2
    python -m benchmarks.accuracy --runs stn --seeds 0  # one run
    python -m benchmarks.accuracy --extra trainer.max_epochs=2   # a quick smoke run
    python -m benchmarks.accuracy --jobs 2              # two runs at a time, cores split between them

Each run is `python -m stn.train <overrides> seed=<s>` in its own folder under
outputs/benchmarks/accuracy/; a run whose metrics.json already exists is read, not repeated,
so an interrupted benchmark picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.machine import describe_machine
from benchmarks.runs import train_unless_done
from stn.paths import ROOT

RUNS = {
    "stn": ["model=stn"],  # the default recipe
    "cnn": ["model=cnn"],
    "tutorial": ["experiment=tutorial"],
}


def run_once(name: str, overrides: list[str], seed: int, out_root: Path, threads: int | None = None) -> dict:
    """One run's metrics, with the wall time of the command that trained it (recorded once)."""
    run_dir = out_root / name / f"seed{seed}"
    done = (run_dir / "metrics.json").is_file()
    start = time.perf_counter()
    metrics, status = train_unless_done(run_dir, [*overrides, f"seed={seed}"], threads=threads)
    if metrics is None:
        raise SystemExit(f"{name} seed {seed} failed (exit {status}); its log: {run_dir / 'train.log'}")
    if not done:
        metrics["time/wall_seconds"] = time.perf_counter() - start
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def summarise(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * spread:.2f} ({100 * min(values):.2f}–{100 * max(values):.2f})"


def runs_parser(description: str, runs: dict[str, list[str]], out: str) -> argparse.ArgumentParser:
    """The options every runs-x-seeds benchmark takes: which runs, seeds, extra overrides, where."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", default=list(runs), choices=list(runs))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / out)
    return parser


def main() -> None:
    parser = runs_parser(__doc__, RUNS, "accuracy")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time; each gets cores/jobs threads")
    args = parser.parse_args()

    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            (name, seed): pool.submit(run_once, name, RUNS[name] + args.extra, seed, args.out, threads)
            for seed in args.seeds
            for name in args.runs
        }
    rows = []
    for name in args.runs:
        results = [futures[name, seed].result() for seed in args.seeds]
        accuracies = [r["test/acc"] for r in results]
        rows.append(
            (
                name,
                " ".join(RUNS[name] + args.extra),
                summarise(accuracies),
                " / ".join(f"{100 * a:.2f}" for a in accuracies),
                statistics.mean(r["time/fit_seconds"] for r in results) / 60,
            )
        )
    print(
        f"\nMachine: {describe_machine()}; seeds {args.seeds}; {args.jobs} run(s) at a time"
        + (f", {threads} thread(s) each" if threads else "")
        + "\n"
    )
    print("| run | overrides | test acc % mean ± std (min–max) | per seed | fit time (min, mean) |")
    print("| --- | --- | --- | --- | --- |")
    for name, overrides, summary, per_seed, minutes in rows:
        print(f"| {name} | `{overrides}` | {summary} | {per_seed} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
