"""Test error against training length for cells of the STN paper's table, over seeds.

    python -m benchmarks.paper_length                  # CNN, ST-CNN Aff on RTS and TC; 1, 2, 4 epochs
    python -m benchmarks.paper_length --lengths 1 2 4 8 --jobs 2
    python -m benchmarks.paper_length --report-only --out docs/paper   # from finished runs

Each length is its own run of `experiment=paper` (one-cycle over the whole run, so every point is
a finished schedule of that length, not the middle of a longer one): one Hydra multirun per
length, `data x model x seed`, in `<runs>/[<extra>/]epochs_<L>/<variants>/`, through joblib.
Runs that have finished (anywhere below `--runs`) are read, not repeated. Then writes
`error_vs_length.md` / `.csv` (mean test error % ± the half-width of its 95% confidence interval
over seeds, t distribution) and `error_vs_length.png` (one panel per variant, the paper's error as
a dashed line).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.machine import describe_machine
from stn.paths import ROOT
from stn.runs.reading import RunFolder
from stn.sweeps.paper_table import (
    MATCH,
    MODELS,
    PAPER,
    PAPER_COLUMNS,
    Run,
    cell,
    confidence_interval,
    find_runs,
)
from stn.utils.files import csv_text, write_atomically


def run_length(
    epochs: int,
    variants: list[str],
    models: list[str],
    seeds: list[int],
    extra: list[str],
    jobs: int,
    runs: Path,
) -> None:
    """One multirun: every variant x model x seed trained for `epochs` epochs with the `extra`
    overrides, unless all of them have already finished somewhere below `runs`."""
    recipe = " ".join(extra)
    finished = {
        (r.variant, r.model, r.seed)
        for r in find_runs(runs)
        if epochs_of(r) == epochs and recipe_of(r) == recipe
    }
    wanted = {(PAPER_COLUMNS[v], m, s) for v in variants for m in models for s in seeds}
    if wanted <= finished:
        print(f"epochs={epochs}: all {len(wanted)} runs already finished below {runs}", flush=True)
        return
    recipe_folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(extra))  # Hydra's grammar: no "=" in a value
    folder = runs / recipe_folder / f"epochs_{epochs}" / "-".join(variants)
    command = [
        sys.executable,
        "-m",
        "stn.train",
        "--multirun",
        "experiment=paper_grid",
        f"data={','.join(variants)}",
        f"model={','.join(models)}",
        f"seed={','.join(map(str, seeds))}",
        *(f"paper_epochs.{variant}={epochs}" for variant in variants),
        *extra,
        f"hydra.launcher.n_jobs={jobs}",
        f"hydra.sweep.dir={folder}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def epochs_of(run: Run) -> int:
    return int(run.config.trainer.max_epochs)


# overrides that place a run in the grid (or only say where it is written) rather than change its recipe
GRID_KEYS = ("data=", "model=", "seed=", "experiment=", "paper_epochs.", "hydra.", "callbacks.progress_bar.")


def recipe_of(run: Run) -> str:
    """What the run's command line changed in experiment=paper's recipe ("" for none)."""
    overrides = RunFolder(run.folder).overrides
    return " ".join(o for o in overrides if not o.lstrip("+~").startswith(GRID_KEYS))


Row = tuple[str, str, str]  # model, recipe, variant


def row_name(model: str, recipe: str) -> str:
    return f"{MODELS.get(model, model)} {recipe}".strip()


def by_cell(runs: list[Run]) -> dict[Row, dict[int, list[float]]]:
    """(model, recipe, variant) -> epochs -> test errors % over seeds."""
    cells: dict[Row, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(runs, key=lambda run: run.seed or 0):
        cells[run.model, recipe_of(run), run.variant][epochs_of(run)].append(run.error)
    return cells


def write_report(runs: list[Run], out: Path) -> str:
    """error_vs_length.md / .csv / .png from finished runs; returns the Markdown."""
    cells = by_cell(runs)
    lengths = sorted({epochs for per_length in cells.values() for epochs in per_length})
    variants = [v for v in PAPER_COLUMNS.values() if any(variant == v for *_, variant in cells)]
    rows = [
        ["model", "recipe", "variant", "epochs", "seeds", "error_mean", "ci95_half_width", "paper", "errors"]
    ]
    header = "| model | variant | paper | " + " | ".join(f"{epochs} ep" for epochs in lengths) + " |"
    lines = [
        "Test error % against training length: mean ± 95% CI half-width over seeds (n), one run per "
        f"length (one-cycle over the whole run); {MATCH} where it reaches the paper's error",
        "",
        header,
        "| --- " * (3 + len(lengths)) + "|",
    ]
    for (model, recipe, variant), per_length in sorted(
        cells.items(), key=lambda item: (item[0][2], item[0][:2])
    ):
        paper = PAPER.get(model, {}).get(variant)
        texts = []
        for epochs in lengths:
            errors = per_length.get(epochs, [])
            if not errors:
                texts.append("")
                continue
            mean, half_width = confidence_interval(errors)
            texts.append(cell(errors, paper))
            each = " / ".join(f"{error:.2f}" for error in errors)  # seeds in order
            summary = [len(errors), f"{mean:.3f}", f"{half_width:.3f}", paper, each]
            rows.append([model, recipe, variant, epochs, *summary])
        paper_text = "—" if paper is None else f"{paper}"
        lines.append(f"| {row_name(model, recipe)} | {variant} | {paper_text} | " + " | ".join(texts) + " |")
    write_atomically(out / "error_vs_length.md", "\n".join(lines) + "\n")
    write_atomically(out / "error_vs_length.csv", csv_text(rows))
    plot(cells, variants, out / "error_vs_length.png")
    return "\n".join(lines)


def plot(cells: dict[Row, dict[int, list[float]]], variants: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(variants), figsize=(4.5 * len(variants), 3.8), squeeze=False)
    for axis, variant in zip(axes[0], variants, strict=True):
        models = sorted((model, recipe) for model, recipe, v in cells if v == variant)
        for index, (model, recipe) in enumerate(models):
            per_length = cells[model, recipe, variant]
            lengths = sorted(per_length)
            means, half_widths = zip(*(confidence_interval(per_length[e]) for e in lengths), strict=True)
            color = f"C{index}"
            label = f"{row_name(model, recipe)} (n={max(len(per_length[e]) for e in lengths)})"
            # the interval's lower end clipped at the best seed: a log axis has no room below 0
            best = [min(per_length[e]) for e in lengths]
            lower = [min(h, m - b) for m, h, b in zip(means, half_widths, best, strict=True)]
            axis.errorbar(
                lengths, means, yerr=[lower, half_widths], marker="o", capsize=3, color=color, label=label
            )
            seeds = [(e, error) for e in lengths for error in per_length[e]]
            axis.scatter(*zip(*seeds, strict=True), s=10, color=color, alpha=0.4)  # each seed
            paper = PAPER.get(model, {}).get(variant)
            if paper is not None and not recipe:  # once per model
                name = MODELS.get(model, model)
                axis.axhline(paper, color=color, linestyle="--", linewidth=1, label=f"paper {name}: {paper}%")
        lengths = sorted({e for m, r in models for e in cells[m, r, variant]})
        error_against_length_axes(axis, lengths, [0.5, 1, 2, 5, 10, 20, 50, 100])
        axis.set_title(f"{variant}: test error vs epochs")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def error_against_length_axes(axis, lengths: list[int], error_ticks: list[float]) -> None:
    """Log-log axes of test error % against epochs, ticks at the lengths run, plain numbers."""
    import matplotlib

    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xticks(lengths)
    axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.set_yticks(error_ticks)
    axis.get_yaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.get_yaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("epochs (one-cycle over the run)")
    axis.set_ylabel("test error %: mean, 95% CI, seeds")
    axis.grid(True, which="both", alpha=0.3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", nargs="+", type=int, default=[1, 2, 4], help="epochs per run")
    parser.add_argument(
        "--variants", nargs="+", default=["mnist_rts", "mnist_cluttered"], choices=list(PAPER_COLUMNS)
    )
    parser.add_argument("--models", nargs="+", default=["cnn", "stn"], choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--extra", nargs="*", default=[], help="overrides that change the recipe")
    parser.add_argument(
        "--jobs", type=int, default=2, help="runs at a time (joblib); each gets cores/jobs threads"
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "paper_length", help="run folders")
    parser.add_argument("--out", type=Path, help="where the table and figure go (default: --runs)")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    args = parser.parse_args()
    print(describe_machine(), flush=True)
    if not args.report_only:
        for epochs in args.lengths:
            run_length(epochs, args.variants, args.models, args.seeds, args.extra, args.jobs, args.runs)
    runs = [r for r in find_runs(args.runs) if epochs_of(r) in args.lengths]
    if not runs:
        raise SystemExit(f"error: no finished run below {args.runs}")
    out = args.out or args.runs
    out.mkdir(parents=True, exist_ok=True)
    print(write_report(runs, out))
    print(f"wrote {out / 'error_vs_length.md'}, .csv and .png ({len(runs)} runs)")


if __name__ == "__main__":
    main()
