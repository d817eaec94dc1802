"""Table 1 at the paper's length: the paper's CNN, ST-CNN Aff / TPS and IC-STN Aff against epochs, per column
(R, RTS, P, E, TC).

    python -m benchmarks.rts_study run --epochs 16 --models paper_cnn paper_stn --seeds 0 1 2 --jobs 2
    python -m benchmarks.rts_study run --epochs 4 --models paper_cnn --seeds 0 --recipe data.batch_size=64
    python -m benchmarks.rts_study run --variant R --epochs 16 --models paper_stn --seeds 0 \
        --recipe data.batch_size=64 trainer.precision=bf16-mixed
    python -m benchmarks.rts_study report --out docs/paper

Every point is one `experiment=paper` run of its own length (a one-cycle schedule over the whole
run), one thread each, `--jobs` at a time. Each finished point is appended to the checked-in
`docs/paper/rts_study.csv` (seed, test error, fit time, the command), so the study runs in parts on
different machines and days: a point already in the CSV is not run again, and a run folder left by
an interrupted part is resumed from its last checkpoint. `report` needs only the CSV: it writes
`rts_study.md` (mean test error % ± 95% interval over seeds, fit times) and `rts_study.png` (error
against length, the paper's errors as dashed lines).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import statistics
import subprocess
import sys
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from benchmarks.machine import describe_machine
from benchmarks.paper_length import error_against_length_axes, row_name
from stn.paper_table import PAPER, cell, confidence_interval
from stn.utils.files import csv_text, write_atomically
from stn.utils.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "docs" / "paper" / "rts_study.csv"
HEADER = [
    "variant",
    "model",
    "recipe",
    "seed",
    "epochs",
    "test_error_percent",
    "fit_seconds",
    "threads",
    "command",
    "collapsed",  # yes: the transform-health alarm fired in the run's last epoch (the model it tests)
]
# Table 1's columns: variant -> data config
DATA = {
    "R": "mnist_rot",
    "RTS": "mnist_rts",
    "P": "mnist_proj",
    "E": "mnist_elastic",
    "TC": "mnist_cluttered",
}
Point = tuple[str, str, str, int, int]  # variant, model, recipe, seed, epochs
RECIPE = "data.batch_size=64"  # the recipe search's choice (docs/paper.md)
# the IC-STN's localization net takes a tenth of the step: at the full one 2 of 3 seeds collapse
CHOSEN = {"paper_ic_stn": f"{RECIPE} model.localization_lr_scale=0.1"}


def read_rows(path: Path = CSV) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def key(row: dict[str, str]) -> Point:
    return row["variant"], row["model"], row.get("recipe", ""), int(row["seed"]), int(row["epochs"])


def command_of(point: Point, folder: Path) -> list[str]:
    variant, model, recipe, seed, epochs = point
    data = DATA[variant]
    return [
        "python", "-m", "stn.train", "experiment=paper", f"data={data}", f"model={model}",
        f"paper_epochs.{data}={epochs}", f"seed={seed}", "num_threads=1", *recipe.split(),
        "callbacks.progress_bar.refresh_rate=0", "print_config=false", f"hydra.run.dir={folder}",
    ]  # fmt: skip


def folder_of(point: Point, runs: Path) -> Path:
    variant, model, recipe, seed, epochs = point
    recipe_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in recipe.replace("=", "-"))
    return runs / "_".join(filter(None, [variant, model, recipe_name, f"e{epochs}", f"s{seed}"]))


_THREADS = threading.Lock()


@contextmanager
def csv_writer_lock(runs: Path):
    """One writer of the CSV at a time, across the threads of a part and parts run side by side."""
    runs.mkdir(parents=True, exist_ok=True)
    with _THREADS, (runs / ".csv.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        yield


def run_point(point: Point, runs: Path, table: Path) -> str:
    """Train one point (or resume its interrupted run) and append its row to the CSV."""
    folder = folder_of(point, runs)
    command = command_of(point, folder)
    run = RunFolder(folder)
    if run.metrics is None:
        if run.last_checkpoint.is_file():  # an interrupted part: go on from its last epoch
            command.append("ckpt_path=last")
        log = runs / f"{folder.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as output:
            result = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, stdout=output, stderr=output)
        if result.returncode != 0:
            return f"{folder.name}: failed (exit {result.returncode}), see {log}"
    metrics = RunFolder(folder).metrics or {}  # written by the run just finished
    error = 100 * (1 - metrics["test/acc"])
    collapsed = "yes" if collapsed_at_the_end(folder, point[4]) else "no"
    shown = [
        c for c in command if not c.startswith(("hydra.run.dir=", "callbacks.progress_bar", "print_config"))
    ]
    row = [*point, f"{error:.2f}", f"{metrics['time/fit_seconds']:.1f}", 1, " ".join(shown), collapsed]
    with csv_writer_lock(runs):  # the CSV is read and rewritten whole
        rows = [[r.get(h, "") for h in HEADER] for r in read_rows(table)]
        write_atomically(table, csv_text([HEADER, *rows, row]))
    return f"{folder.name}: test error {error:.2f}%, fit {metrics['time/fit_seconds']:.0f} s" + (
        ", its transform collapsed" if collapsed == "yes" else ""
    )


def collapsed_at_the_end(folder: Path, epochs: int) -> bool:
    """Whether the transform-health alarm fired in the last epoch: the tested model has collapsed."""
    log = folder / "train.log"
    return log.is_file() and f"transform collapse in epoch {epochs - 1}:" in log.read_text(errors="replace")


def run(args: argparse.Namespace) -> None:
    done = {key(row) for row in read_rows(args.csv)}
    recipe = " ".join(args.recipe)
    # longest first within a part: the points the targets are read at come first
    wanted = [
        (args.variant, model, recipe, seed, epochs)
        for epochs in sorted(args.epochs, reverse=True)
        for seed in args.seeds
        for model in args.models
    ]
    todo = [point for point in wanted if point not in done]
    print(f"{len(wanted) - len(todo)} of {len(wanted)} points already in {args.csv}; running {len(todo)}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for line in pool.map(lambda point: run_point(point, args.runs, args.csv), todo):
            print(line, flush=True)


def report(args: argparse.Namespace) -> None:
    """rts_study.md and .png from the CSV alone."""
    cells: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    fits: dict[tuple[str, str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in sorted(read_rows(args.csv), key=lambda row: int(row["seed"])):
        name = (row["model"], row.get("recipe", ""), row["variant"])
        cells[name][int(row["epochs"])].append(float(row["test_error_percent"]))
        fits[name][int(row["epochs"])].append(float(row["fit_seconds"]))
    lines = [
        f"Written by `python -m benchmarks.rts_study report --out docs/paper` from `{args.csv.name}`.",
        "",
        "Test error %: mean ± the half-width of its 95% interval over seeds (n seeds), each seed's error, "
        "and the mean fit time of one run (one thread).",
        "",
        "| model | recipe | variant | paper | epochs | error % (n) | seeds | fit (one thread) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    core_seconds = 0.0
    for (model, recipe, variant), per_length in sorted(
        cells.items(), key=lambda item: (item[0][2], item[0][:2])
    ):
        paper = PAPER.get(model, {}).get(variant)
        for epochs in sorted(per_length):
            errors = per_length[epochs]
            seconds = fits[model, recipe, variant][epochs]
            core_seconds += sum(seconds)
            each = " / ".join(f"{error:.2f}" for error in errors)
            lines.append(
                f"| {row_name(model, '')} | {recipe or '—'} | {variant} | {paper or '—'} | {epochs} | "
                f"{cell(errors, paper)} | {each} | {statistics.mean(seconds) / 60:.1f} min |"
            )
    lines += ["", f"All {sum(len(e) for c in cells.values() for e in c.values())} runs: "
              f"{core_seconds / 3600:.1f} core-hours of fitting (x86_64 CPU, one thread a run)."]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "rts_study.md", "\n".join(lines) + "\n")
    for variant in sorted({variant for *_, variant in cells}):
        lengths = {epochs for (*_, v), per_length in cells.items() if v == variant for epochs in per_length}
        if len(lengths) < 2:
            continue  # one length: the table says it all
        suffix = "" if variant == "RTS" else f"_{variant}"
        plot(cells, fits, variant, args.recipe, args.out / f"rts_study{suffix}.png")
    print("\n".join(lines))
    print(f"wrote {args.out / 'rts_study.md'} and .png")
    for name, per_length in cells.items():  # the interval of the longest point, for the note
        epochs = max(per_length)
        mean, half = confidence_interval(per_length[epochs])
        print(f"{row_name(name[0], name[1])} {name[2]} at {epochs} epochs: {mean:.2f} ± {half:.2f}%")


def plot(cells: dict, fits: dict, variant: str, recipe: str, path: Path) -> None:
    """Error against length for each model's chosen recipe (`recipe`, or the model's own in
    `CHOSEN`; solid: mean and 95% interval, dots: seeds, each point labelled with its mean fit
    time), experiment=paper's own recipe dotted, the paper's errors dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 5.2))
    models = sorted({model for model, _, v in cells if v == variant})
    for index, model in enumerate(models):
        color = f"C{index}"
        chosen = CHOSEN.get(model, recipe)
        for shown, style in ((chosen, "-"), ("", ":")):
            per_length = cells.get((model, shown, variant))
            if not per_length or (shown == chosen and style == ":"):
                continue
            lengths = sorted(per_length)
            means, halves = zip(*(confidence_interval(per_length[e]) for e in lengths), strict=True)
            lower = [min(h, m - min(per_length[e])) for m, h, e in zip(means, halves, lengths, strict=True)]
            label = f"{row_name(model, '')}, {shown or 'experiment=paper as is'}"
            axis.errorbar(lengths, means, yerr=[lower, halves], fmt=style, marker="o", capsize=3,
                          color=color, alpha=1.0 if style == "-" else 0.5, label=label)  # fmt: skip
            seeds = [(e, error) for e in lengths for error in per_length[e]]
            axis.scatter(*zip(*seeds, strict=True), s=10, color=color, alpha=0.4)
            if style == "-":
                for epochs, mean in zip(lengths, means, strict=True):
                    minutes = statistics.mean(fits[model, shown, variant][epochs]) / 60
                    axis.annotate(f"{minutes:.0f} min", (epochs, mean), textcoords="offset points",
                                  xytext=(6, 4), fontsize=7, color=color)  # fmt: skip
        paper = PAPER.get(model, {}).get(variant)
        if paper is not None:
            axis.axhline(
                paper,
                color=color,
                linestyle="--",
                linewidth=1,
                label=f"paper {row_name(model, '')}: {paper}%",
            )
    lengths = sorted({e for (_, _, v), per_length in cells.items() if v == variant for e in per_length})
    error_against_length_axes(axis, lengths, [0.5, 1, 2, 5, 10])
    axis.set_title(
        f"{variant}: test error against training length\n(labels: fit time of one run, one thread)",
        fontsize=10,
    )
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="train the points not yet in the CSV")
    runner.add_argument("--variant", default="RTS", choices=list(DATA))
    runner.add_argument("--models", nargs="+", default=["paper_cnn", "paper_stn", "paper_ic_stn"])
    runner.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    runner.add_argument("--epochs", nargs="+", type=int, default=[8, 16])
    runner.add_argument("--recipe", nargs="*", default=[], help="overrides that change experiment=paper")
    runner.add_argument("--jobs", type=int, default=1, help="points at a time, one thread each")
    runner.add_argument("--runs", type=Path, default=ROOT / "outputs" / "rts_study", help="run folders")
    reporter = commands.add_parser("report", help="the table and figure from the CSV")
    reporter.add_argument("--out", type=Path, default=CSV.parent)
    reporter.add_argument("--recipe", default=RECIPE, help="the recipe the figure draws solid (but CHOSEN's)")
    for command in (runner, reporter):
        command.add_argument("--csv", type=Path, default=CSV, help="the study's finished points")
    args = parser.parse_args(argv)
    print(describe_machine(), flush=True)
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
