"""The cost of finding a recipe, side by side on one space and one data set: the same TPE search
(`hparams_search=optuna`, its sampler seed fixed) without a pruner, with a Hyperband pruner, and
without a pruner in batches (each batch of `--jobs` trials waits for its slowest, the way Hydra's
own Optuna sweeper launches them) against the asynchronous default.

    python -m benchmarks.pruned_search --trials 16 --epochs 6 --jobs 2
    python -m benchmarks.pruned_search --report outputs/pruned_search   # the table again, no training

Each search is one `python -m stn.train hparams_search=optuna ...` with one thread a job; what it
costs is read from its sweep folder's trials.csv (each trial's start and end): core-hours (the sum
of the trials' times x threads), core-hours until a search first reached the unpruned search's best
validation accuracy, and the slot-seconds left idle while trials remained. A small stand-in for the
paper's search: the default ST-CNN on a subset of MNIST's training digits (validation digits drawn
from them: `data.val_size`; the test set is not read).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from benchmarks.machine import describe_cpu, describe_machine
from stn.paths import ROOT
from stn.sweeps.study_plots import idle_slot_seconds

SEARCHES = ("unpruned", "hyperband", "unpruned, batches")


def search_overrides(name: str, epochs: int) -> list[str]:
    """The sweeper's settings of one search beyond the shared ones."""
    return {
        "unpruned": [],
        "hyperband": [
            "hydra.sweeper.pruner={_target_:optuna.pruners.HyperbandPruner,min_resource:1,"
            f"max_resource:{epochs},reduction_factor:3}}"
        ],
        "unpruned, batches": ["hydra.sweeper.asynchronous=false"],
    }[name]


def shared_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "hparams_search=optuna", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}",
        f"hydra.sweeper.n_jobs={args.jobs}", f"hydra.sweeper.n_trials={args.trials}",
        "hydra.sweeper.sampler.seed=1234", f"hydra.sweeper.sampler.n_startup_trials={args.startup}",
        f"trainer.max_epochs={args.epochs}", f"data.train_subset={args.train_subset}",
        f"data.val_size={args.val_size}", "test=false", "num_threads=1", "trainer.accelerator=cpu",
        "callbacks.progress_bar.refresh_rate=0", "print_config=false", *args.overrides,
    ]  # fmt: skip


def folder_of(root: Path, name: str) -> Path:
    return root / name.replace(", ", "_")


def run_search(name: str, args: argparse.Namespace) -> None:
    sweep = folder_of(args.out, name)
    if (sweep / "trials.csv").is_file() and len(read_trials(sweep)) >= args.trials:
        print(f"{name}: done already ({sweep})", flush=True)
        return
    settings = search_overrides(name, args.epochs)
    command = [sys.executable, "-m", "stn.train", *shared_overrides(args), *settings]
    command.append(f"hydra.sweep.dir={sweep}")
    print("$ python", " ".join(command[1:]), flush=True)
    sweep.parent.mkdir(parents=True, exist_ok=True)
    with (args.out / f"{sweep.name}.log").open("w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=log, check=False)


def read_trials(sweep: Path) -> list[dict]:
    with (sweep / "trials.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        row["start"], row["end"] = (datetime.fromisoformat(row[k]) for k in ("start", "end"))
        row["value"] = float(row["value"]) if row["value"] else None
        row["params"] = json.loads(row["params"])
    return rows


def cost(sweep: Path, target: float, slots: int) -> dict:
    """Core-hours in all, core-hours until the best-so-far finished value first reached `target`
    (trials counted as they ended), the best finished value, and idle slot-seconds."""
    rows = read_trials(sweep)
    origin = min(r["start"] for r in rows)
    spans = [((r["start"] - origin).total_seconds(), (r["end"] - origin).total_seconds()) for r in rows]
    used, to_target, best = 0.0, None, None
    for row in sorted(rows, key=lambda r: r["end"]):
        used += (row["end"] - row["start"]).total_seconds()
        if row["state"] == "COMPLETE" and row["value"] is not None:
            best = row["value"] if best is None else max(best, row["value"])
            if to_target is None and best >= target:
                to_target = used
    return {
        "trials": len(rows),
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "core_hours": used / 3600,
        "to_target": None if to_target is None else to_target / 3600,
        "best": best,
        "wall_minutes": max(end for _, end in spans) / 60,
        "idle_slot_seconds": idle_slot_seconds(spans, slots),
    }


def report(args: argparse.Namespace) -> str:
    names = [name for name in SEARCHES if (folder_of(args.out, name) / "trials.csv").is_file()]
    if "unpruned" not in names:
        sys.exit(f"error: no unpruned search under {args.out}; run it first")
    target = cost(folder_of(args.out, "unpruned"), 0.0, args.jobs)["best"]
    lines = [
        f"Target: the unpruned search's best validation accuracy, {target:.4f}.",
        f"{describe_machine()}; {describe_cpu()}.",
        "",
        "| search | trials (pruned) | core-hours | core-hours to the target | vs unpruned | best val acc "
        "| wall min | idle slot-s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = cost(folder_of(args.out, "unpruned"), target, args.jobs)
    for name in names:
        c = cost(folder_of(args.out, name), target, args.jobs)
        reached = "not reached" if c["to_target"] is None else f"{c['to_target']:.3f}"
        ratio = "" if c["to_target"] is None else f"{c['to_target'] / base['to_target']:.2f}x"
        lines.append(
            f"| {name} | {c['trials']} ({c['pruned']}) | {c['core_hours']:.3f} | {reached} | {ratio} "
            f"| {c['best']:.4f} | {c['wall_minutes']:.1f} | {c['idle_slot_seconds']:.0f} |"
        )
    command = " ".join(["python -m stn.train", *shared_overrides(args)])
    lines += ["", f"Each search: `{command} <its settings>` (benchmarks/pruned_search.py)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--startup", type=int, default=6, help="random trials before TPE models the space")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=6144)
    parser.add_argument("--val-size", type=int, default=2048)
    parser.add_argument("--overrides", nargs="*", default=[], help="more overrides (data=..., model=...)")
    parser.add_argument("--searches", nargs="+", default=list(SEARCHES), choices=list(SEARCHES))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "pruned_search")
    parser.add_argument("--report", action="store_true", help="print the table from finished searches only")
    args = parser.parse_args()
    if not args.report:
        for name in args.searches:
            run_search(name, args)
    print(report(args))


if __name__ == "__main__":
    main()
