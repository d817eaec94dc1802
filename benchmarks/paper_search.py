"""Table 1's validation searches (conf/hparams_search/paper_search.yaml): one Optuna study per
column, kept as a journal file under docs/paper/search/, so that a stopped search goes on in a later
session with the same command.

    python -m benchmarks.paper_search run --column RTS          # the study's command (runs until n_trials)
    python -m benchmarks.paper_search report                    # docs/paper/search/searches.md

`report` needs only the journals: per study, its trials by state, the best validation accuracy
and its recipe, and the core-hours spent (each trial one thread: the sum of its wall time).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from stn.paths import ROOT
from stn.sweeps.storage import open_storage
from stn.utils.files import write_atomically

SEARCHES = ROOT / "docs" / "paper" / "search"
SPACE = ROOT / "conf" / "hparams_search" / "paper_search.yaml"
# column -> (data, model): the ST-CNN Aff of the paper's shape on R, RTS, P, and the CNN of RTS
COLUMNS = {
    "R": ("mnist_rot", "paper_stn"),
    "RTS": ("mnist_rts", "paper_stn"),
    "P": ("mnist_proj", "paper_stn"),
    "RTS_CNN": ("mnist_rts", "paper_cnn"),
}


def command(column: str) -> list[str]:
    """The search's command: the same one continues the stored study."""
    data, model = COLUMNS[column]
    search = "paper_search" if model == "paper_cnn" else "paper_search_stn"  # ST-CNN: its localization too
    journal = SEARCHES / f"{column}.journal"
    started = f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    return [
        sys.executable, "-m", "stn.train", "experiment=paper", f"hparams_search={search}", f"data={data}",
        f"model={model}", "num_threads=1", "callbacks.progress_bar.refresh_rate=0",
        f"hydra.sweeper.study_name={column}", f"hydra.sweeper.storage=journal:{journal}",
        f"hydra.sweep.dir={ROOT / 'outputs' / 'search' / column / started}",
    ]  # fmt: skip


def run(args: argparse.Namespace) -> None:
    SEARCHES.mkdir(parents=True, exist_ok=True)
    shown = command(args.column)
    print(" ".join(shown[1:]), flush=True)
    raise SystemExit(subprocess.call(shown, cwd=ROOT))


def _hours(trial: optuna.trial.FrozenTrial, now: datetime.datetime) -> float:
    if trial.datetime_start is None:
        return 0.0
    end = trial.datetime_complete or now
    return (end - trial.datetime_start).total_seconds() / 3600


def report(args: argparse.Namespace) -> None:
    config = yaml.safe_load(SPACE.read_text())
    space = config["hydra"]["sweeper"]
    stn_keys = yaml.safe_load(SPACE.with_name("paper_search_stn.yaml").read_text())["hydra"]["sweeper"][
        "params"
    ]
    epochs = config["search_epochs"]
    lines = [
        "Written by `python -m benchmarks.paper_search report` from the journals beside it.",
        "",
        "The space (conf/hparams_search/paper_search.yaml; the ST-CNN's studies also search the "
        "localization net, paper_search_stn.yaml):",
        "",
        *(f"- `{key}`: `{value}`" for key, value in space["params"].items()),
        *(f"- `{key}`: `{value}` (ST-CNN)" for key, value in stn_keys.items()),
        "",
        f"Hyperband over the length (from {space['pruner']['min_resource']} to {epochs} epochs, reduction "
        f"factor {space['pruner']['reduction_factor']}); TPE after {space['sampler']['n_startup_trials']} "
        f"random trials; {space['n_trials']} trials a study; val/acc_best on the 5,000 digits held out of "
        "the training images (`data.val_size`): the test set is never read.",
        "",
        "| study | trials: complete / pruned / failed / running | best val/acc_best | its recipe | core-h |",
        "| --- | --- | --- | --- | --- |",
    ]
    now = datetime.datetime.now()
    total = 0.0
    for journal in sorted(SEARCHES.glob("*.journal")):
        storage = open_storage(f"journal:{journal}")
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            states = [t.state for t in study.trials]
            counts = " / ".join(
                str(states.count(state))
                for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                              optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING)
            )  # fmt: skip
            hours = sum(_hours(trial, now) for trial in study.trials)
            total += hours
            complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if complete:
                best = max(complete, key=lambda t: t.value)
                recipe = " ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                                  for key, value in best.params.items())  # fmt: skip
                shown = f"{best.value:.4f} (trial {best.number})"
            else:
                shown, recipe = "—", "—"
            lines.append(
                f"| {summary.study_name} ({journal.name}) | {counts} | {shown} | {recipe} | {hours:.2f} |"
            )
    lines += ["", f"Search core-hours so far: {total:.2f} (one thread a trial; x86_64 CPU, float32)."]
    write_atomically(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run (or continue) one column's study")
    runner.add_argument("--column", choices=list(COLUMNS), required=True)
    reporter = commands.add_parser("report", help="the searches so far, from their journals")
    reporter.add_argument("--out", type=Path, default=SEARCHES / "searches.md")
    args = parser.parse_args(argv)
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
