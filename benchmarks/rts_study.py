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
import math
import statistics
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from benchmarks.machine import describe_machine
from benchmarks.paper_length import error_against_length_axes, row_name
from benchmarks.runs import train_unless_done
from stn.paths import ROOT
from stn.sweeps.paper_table import PAPER, POLAR_TRANSFORMER_STN, cell, confidence_interval
from stn.utils.files import csv_text, file_lock, write_atomically

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
    # how the point's recipe was chosen: `validation` (a search on digits held out of the training
    # images, docs/paper/search/) or `test` (by test error: the earlier cells, kept as history)
    "recipe_chosen_on",
]
CHOSEN_ON = ("validation", "test")
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
    """The study's rows; a row written before `recipe_chosen_on` existed was chosen on test error."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [
            {**row, "recipe_chosen_on": row.get("recipe_chosen_on") or "test"} for row in csv.DictReader(file)
        ]


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


@contextmanager
def csv_writer_lock(runs: Path):
    """One writer of the CSV at a time, across the threads of a part and parts run side by side."""
    runs.mkdir(parents=True, exist_ok=True)
    with file_lock(runs / ".csv.lock"):
        yield


def run_point(point: Point, runs: Path, table: Path, chosen_on: str) -> str:
    """Train one point (or resume its interrupted run) and append its row to the CSV."""
    folder = folder_of(point, runs)
    command = command_of(point, folder)
    overrides = [c for c in command[3:] if not c.startswith(("hydra.run.dir=", "callbacks.progress_bar"))]
    metrics, status = train_unless_done(folder, overrides, log=runs / f"{folder.name}.log")
    if metrics is None:
        return f"{folder.name}: failed (exit {status}), see {runs / f'{folder.name}.log'}"
    error = 100 * (1 - metrics["test/acc"])
    collapsed = "yes" if collapsed_at_the_end(folder, point[4]) else "no"
    shown = [
        c for c in command if not c.startswith(("hydra.run.dir=", "callbacks.progress_bar", "print_config"))
    ]
    row = [
        *point,
        f"{error:.2f}",
        f"{metrics['time/fit_seconds']:.1f}",
        1,
        " ".join(shown),
        collapsed,
        chosen_on,
    ]
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
        for line in pool.map(lambda point: run_point(point, args.runs, args.csv, args.chosen_on), todo):
            print(line, flush=True)


TABLE_MODELS = ("paper_cnn", "paper_stn", "paper_stn_tps", "paper_ic_stn")
# the study's targets, 3-seed mean test error % (variant -> model -> at most)
TARGETS = {
    "R": {"paper_stn": 0.8},
    "RTS": {"paper_stn": 0.6, "paper_cnn": 1.0},
    "P": {"paper_stn": 1.0, "paper_cnn": 1.0},
    "E": {"paper_stn": 1.4, "paper_cnn": 1.4},
    "TC": {"paper_stn": 2.5, "paper_cnn": 2.5},
}


def table_point(rows: list[dict[str, str]]) -> tuple[str, int, list[float], list[float]] | None:
    """The point a Table 1 cell shows for one model and column: the longest length with the most
    seeds (three where there are), and at that length the recipe with the most seeds, then the
    lowest mean. Never the best seed or the best length by test error alone. (recipe, epochs,
    errors, fit seconds), or None."""
    points: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        points[row.get("recipe", ""), int(row["epochs"])].append(row)
    if not points:
        return None
    most_seeds = min(3, max(len(found) for found in points.values()))
    eligible = {key: found for key, found in points.items() if len(found) >= most_seeds}
    epochs = max(e for _, e in eligible)
    candidates = [(recipe, found) for (recipe, e), found in eligible.items() if e == epochs]
    recipe, found = min(
        candidates,
        key=lambda c: (-len(c[1]), statistics.mean(float(r["test_error_percent"]) for r in c[1])),
    )
    found = sorted(found, key=lambda r: int(r["seed"]))
    return (
        recipe,
        epochs,
        [float(r["test_error_percent"]) for r in found],
        [float(r["fit_seconds"]) for r in found],
    )


def parameter_count(model: str, variant: str) -> int:
    """Trainable parameters of `model` on `variant`'s canvas, from its config (no run needed)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from stn.environment import set_up
    from stn.paths import CONF_DIR

    set_up()  # the resolvers the configs read
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train.yaml", overrides=[f"data={DATA[variant]}", f"model={model}"])
    return sum(p.numel() for p in instantiate(cfg.model).net.parameters())


def own_settings(recipe: str) -> str:
    """What a recipe sets beyond the study's batch 64 and bfloat16: its own step sizes."""
    shared = ("data.batch_size=64", "trainer.precision=bf16-mixed")
    own = [setting for setting in recipe.split() if setting not in shared]
    if not any(setting.startswith("data.batch_size=") for setting in recipe.split()):
        own.insert(0, "batch 256")  # experiment=paper's own batch
    return " ".join(own)


# points of another definition of a variant, kept in the CSV for the record (P's corner noise read
# as 5 px per axis): never a Table 1 cell
OTHER_DEFINITIONS = ("data.distortion.",)


FLAT = 0.97  # a doubling of the length that takes off less than 3% of the error: not falling


def what_it_would_take(
    rows: list[dict[str, str]], model: str, variant: str, recipe: str, target: float
) -> str:
    """For a target a cell misses: its recipe's curve at the two longest lengths measured (means
    over the seeds measured at both, so that a seed's own level does not read as a slope), and the
    length (and core-hours for three seeds) at which that curve, falling at the same rate per
    doubling, would reach the target; or that it has stopped falling."""
    per_length: dict[int, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if (row["model"], row["variant"], row.get("recipe", "")) == (model, variant, recipe):
            per_length[int(row["epochs"])].append(row)
    if len(per_length) < 2:
        return "one length measured at this recipe: no curve to read yet"
    shorter, longest = sorted(per_length)[-2:]
    seeds = {r["seed"] for r in per_length[shorter]} & {r["seed"] for r in per_length[longest]}
    paired = {
        e: [r for r in per_length[e] if r["seed"] in seeds] or per_length[e] for e in (shorter, longest)
    }
    before, after = (
        statistics.mean(float(r["test_error_percent"]) for r in paired[e]) for e in (shorter, longest)
    )
    curve = f"{before:.2f}% at {shorter} epochs, {after:.2f}% at {longest}"
    if seeds and any(len(paired[e]) < len(per_length[e]) for e in (shorter, longest)):
        curve = f"on seed{'s' if len(seeds) > 1 else ''} {', '.join(sorted(seeds, key=int))}: {curve}"
    per_doubling = (after / before) ** (1 / math.log2(longest / shorter))
    if per_doubling >= FLAT:
        return f"{curve}: not falling with length, so length alone will not reach it"
    doublings = math.ceil(math.log(target / after) / math.log(per_doubling))
    epochs = longest * 2**doublings
    seconds_per_epoch = statistics.mean(float(r["fit_seconds"]) for r in per_length[longest]) / longest
    core_hours = 3 * seconds_per_epoch * epochs / 3600
    return (
        f"{curve} ({1 - per_doubling:.0%} less a doubling): at that rate {epochs} epochs, "
        f"about {core_hours:.1f} core-hours for 3 seeds"
    )


PROTOCOL = {  # how a row's cells were chosen, said once a row
    "validation": "length: the longest with 3 seeds; recipe: the best of its column's validation search",
    "test": "length: the longest with 3 seeds; recipe: picked by test error (R, RTS, P: the halved step)",
}


def table1(rows: list[dict[str, str]], chosen_on: str = "validation") -> tuple[list[str], list[str]]:
    """Table 1 from the rows whose recipe was chosen on `chosen_on` (one row per model, one column
    per variant, each row's protocol said once), the published rows apart below it, and the
    targets' verdicts; all from the CSV alone (parameter counts from conf/)."""
    rows = [r for r in rows if r.get("recipe_chosen_on", "test") == chosen_on]
    variants = [v for v in DATA if any(r["variant"] == v for r in rows)]
    if not variants:
        return [f"No point yet has a recipe chosen on {chosen_on}."], []
    header = "| model | " + " | ".join(variants) + " | parameters (RTS) | protocol |"
    lines = [header, "|" + " --- |" * (len(variants) + 3)]
    chosen: dict[tuple[str, str], tuple] = {}
    for model in TABLE_MODELS:
        cells = []
        for variant in variants:
            point = table_point([
                r for r in rows
                if r["model"] == model and r["variant"] == variant
                and not any(other in r.get("recipe", "") for other in OTHER_DEFINITIONS)
            ])  # fmt: skip
            if point is None:
                cells.append("—")
                continue
            chosen[model, variant] = point
            recipe, epochs, errors, seconds = point
            paper = PAPER.get(model, {}).get(variant)
            mean_minutes = statistics.mean(seconds) / 60
            cells.append(
                f"{cell(errors, paper)}, {epochs} ep, {mean_minutes:.0f} min"
                + (f" (paper {paper})" if paper is not None else "")
                + ("" if "bf16" in recipe else ", fp32")
                + (f", {own_settings(recipe)}" if own_settings(recipe) else "")
            )
        if any(c != "—" for c in cells):
            lines.append(
                f"| {row_name(model, '')} | " + " | ".join(cells) + f" | {parameter_count(model, 'RTS'):,} | "
                f"{PROTOCOL[chosen_on]} |"
            )
    lines += ["", "Published, not measured here (test error %):", ""]
    lines += ["| model | " + " | ".join(variants) + " |", "|" + " --- |" * (len(variants) + 1)]
    for model in TABLE_MODELS:
        published = [str(PAPER.get(model, {}).get(v, "—")) for v in variants]
        if any(value != "—" for value in published):
            lines.append(
                f"| {row_name(model, '')}, Jaderberg et al. (2015) | " + " | ".join(published) + " |"
            )
    polar = [f"{POLAR_TRANSFORMER_STN[v]}" if v in POLAR_TRANSFORMER_STN else "—" for v in variants]
    lines.append("| STN of Esteves et al. (ICLR 2018), ~150k parameters | " + " | ".join(polar) + " |")
    verdicts = []
    for variant, targets in TARGETS.items():
        for model, target in targets.items():
            point = chosen.get((model, variant))
            if point is None:
                verdicts.append(f"- {variant} {row_name(model, '')} <= {target}%: not measured")
                continue
            mean, seeds = statistics.mean(point[2]), len(point[2])
            if mean > target:
                met = "not met; " + what_it_would_take(rows, model, variant, point[0], target)
            else:
                met = "met" if seeds >= 3 else f"below it on {seeds} seed(s); 3 are needed"
            verdicts.append(
                f"- {variant} {row_name(model, '')} <= {target}%: {mean:.2f}% "
                f"(n={len(point[2])}, {point[1]} epochs): {met}"
            )
        cnn, stn = chosen.get(("paper_cnn", variant)), chosen.get(("paper_stn", variant))
        if cnn and stn:
            below = statistics.mean(stn[2]) < statistics.mean(cnn[2])
            verdicts.append(f"- {variant} ST-CNN below the CNN: {'met' if below else 'not met'}")
    return lines, verdicts


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
    table, verdicts = table1(read_rows(args.csv), "validation")
    history, old_verdicts = table1(read_rows(args.csv), "test")
    cell_text = (
        "Each cell: test error % as mean ± the half-width of its 95% interval over seeds (n), the "
        "training length, the mean fit time of one run (one thread a run, two runs sharing the 2 cores), "
        "the paper's error; ✓ where the mean is at or below the paper's (the interval plays no part in "
        "the mark). A cell is the longest length with three seeds (else with the most), and at that "
        "length the recipe with the most seeds: never the best seed or length by test error. Recipe: "
        "batch 64, bfloat16 autocast (`trainer.precision=bf16-mixed`) unless `fp32` is said, "
        "experiment=paper's one-cycle Adam at peak 0.002 unless another setting is said."
    )
    lines = [
        lines[0],
        "",
        "## Table 1: recipes chosen on validation digits",
        "",
        cell_text,
        "",
        *table,
        "",
        "Targets (3-seed means):",
        "",
        *(verdicts or ["- none measured yet"]),
        "",
        "## Table 1 before the validation searches: recipes chosen on test error (history)",
        "",
        "The same rules, from the rows whose recipe was picked by test error; a reviewer reads the "
        "table above.",
        "",
        *history,
        "",
        "Targets (3-seed means) on these rows:",
        "",
        *old_verdicts,
        "",
        "## Every point",
        "",
        *lines[2:],
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "rts_study.md", "\n".join(lines) + "\n")
    for variant in sorted({variant for *_, variant in cells}):  # one figure per column
        suffix = "" if variant == "RTS" else f"_{variant}"
        plot(cells, fits, variant, args.recipe, args.out / f"rts_study{suffix}.png")
    print("\n".join(lines))
    print(f"wrote {args.out / 'rts_study.md'} and .png")
    for name, per_length in cells.items():  # the interval of the longest point, for the note
        epochs = max(per_length)
        mean, half = confidence_interval(per_length[epochs])
        print(f"{row_name(name[0], name[1])} {name[2]} at {epochs} epochs: {mean:.2f} ± {half:.2f}%")


def plot(cells: dict, fits: dict, variant: str, recipe: str, path: Path) -> None:
    """Error against length, one line per model and recipe (mean and 95% interval; dots: seeds;
    each point labelled with its mean fit time): bfloat16 recipes solid, float32 ones dotted, the
    paper's errors dashed. `recipe` is kept for the command line; every recipe is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 5.2))
    models = sorted({model for model, _, v in cells if v == variant})
    for index, model in enumerate(models):
        color = f"C{index}"
        recipes = sorted(
            r for m, r, v in cells
            if m == model and v == variant and not any(o in r for o in OTHER_DEFINITIONS)
        )  # fmt: skip
        for shown in recipes:
            per_length = cells[model, shown, variant]
            style = "-" if "bf16" in shown else ":"
            lengths = sorted(per_length)
            means, halves = zip(*(confidence_interval(per_length[e]) for e in lengths), strict=True)
            lower = [min(h, m - min(per_length[e])) for m, h, e in zip(means, halves, lengths, strict=True)]
            label = f"{row_name(model, '')}, {'bf16' if 'bf16' in shown else 'fp32'} {own_settings(shown)}"
            axis.errorbar(lengths, means, yerr=[lower, halves], fmt=style, marker="o", capsize=3,
                          color=color, alpha=1.0 if style == "-" else 0.5, label=label.strip())  # fmt: skip
            seeds = [(e, error) for e in lengths for error in per_length[e]]
            axis.scatter(*zip(*seeds, strict=True), s=10, color=color, alpha=0.4)
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
    runner.add_argument(
        "--chosen-on", choices=CHOSEN_ON, default="test",
        help="how --recipe was chosen: validation (a search's best, docs/paper/search/) or test",
    )  # fmt: skip
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
