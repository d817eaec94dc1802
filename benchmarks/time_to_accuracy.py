"""Time to accuracy: wall time of the default 20-epoch run and of `experiment=fast`, one run at a
time (so each has the whole machine), with the test accuracy each ends at.

    python -m benchmarks.time_to_accuracy [--runs default fast] [--seeds 0 1 2] [--extra trainer=gpu]

Runs go through benchmarks/accuracy.py's `run_once` (same folders under outputs/benchmarks/, an
interrupted benchmark resumes). "fit" is `trainer.fit` alone (what the target counts); "wall" is
the whole command, start-up and test included.
"""

from __future__ import annotations

import statistics

from benchmarks.accuracy import run_once, runs_parser
from benchmarks.machine import describe_machine

RUNS = {
    "default": ["model=stn", "trainer.max_epochs=20"],
    "fast": ["experiment=fast"],
}
TARGET = 0.99


def main() -> None:
    args = runs_parser(__doc__, RUNS, "time_to_accuracy").parse_args()

    results = {
        (name, seed): run_once(name, RUNS[name] + args.extra, seed, args.out)
        for name in args.runs
        for seed in args.seeds
    }
    print(f"\nMachine: {describe_machine()}; one run at a time; target {100 * TARGET:.1f}% test accuracy\n")
    print("| run | overrides | seed | fit (s) | wall (s) | test acc % | >= target |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (name, seed), metrics in results.items():
        print(
            f"| {name} | `{' '.join(RUNS[name] + args.extra)}` | {seed} | {metrics['time/fit_seconds']:.1f} "
            f"| {metrics['time/wall_seconds']:.1f} | {100 * metrics['test/acc']:.2f} "
            f"| {'yes' if metrics['test/acc'] >= TARGET else 'no'} |"
        )
    for name in args.runs:
        runs = [results[name, seed] for seed in args.seeds]
        print(
            f"\n{name}: fit {statistics.mean(r['time/fit_seconds'] for r in runs):.1f} s mean, test acc "
            f"{100 * statistics.mean(r['test/acc'] for r in runs):.2f}% mean, "
            f"{sum(r['test/acc'] >= TARGET for r in runs)}/{len(runs)} runs >= {100 * TARGET:.1f}%"
        )


if __name__ == "__main__":
    main()
