"""The STN paper's results table from finished runs (the command: `python -m stn.paper_table`,
stn/paper_table.py).

Finds every finished run below a folder (a `metrics.json` next to `.hydra/`), reads which
`data=` and `model=` it used (Hydra's runtime choices) and its test accuracy, and writes
`paper_table.md` and `paper_table.csv`: rows = models, columns = R / RTS / P / E / TC, cells =
mean test error % ± the half-width of its 95% confidence interval over seeds (t distribution; and
how many seeds), with the paper's published errors beside ours and a mark where our mean is at or
below the paper's. Also `paper_<variant>.png` per variant: the same fixed test digits, then what
each trained transformer makes of them (one row per model). Every run's figures also go to
`paper_runs.csv` (variant, model, seed, test error, schedule), so the table can be written again
without the run folders.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision.utils import make_grid, save_image

from stn.errors import UserError
from stn.loading import checkpoint_model
from stn.pictures import at_input_size, labelled_rows
from stn.runs.reading import run_folders
from stn.utils.files import csv_text, read_csv, write_atomically
from stn.utils.instantiators import build

PAPER_COLUMNS = {  # the data= choice -> its column in the paper's table
    "mnist_rot": "R",
    "mnist_rts": "RTS",
    "mnist_proj": "P",
    "mnist_elastic": "E",
    "mnist_cluttered": "TC",
}
MODELS = {
    "fcn": "FCN",
    "st_fcn": "ST-FCN Aff",
    "cnn": "CNN",
    "stn": "ST-CNN Aff",
    "stn_proj": "ST-CNN Proj",
    "stn_tps": "ST-CNN TPS",
    "ic_stn": "IC-STN Aff",
    "ic_stn_proj": "IC-STN Proj",
    "paper_cnn": "CNN (paper's shape)",
    "paper_stn": "ST-CNN Aff (paper's shape)",
    "paper_ic_stn": "IC-STN Aff (paper's shape)",
    "paper_stn_tps": "ST-CNN TPS (paper's shape)",
}
# test error %, Jaderberg et al. 2015: table 1 (R, RTS, P, E; FCN, ST-FCN Aff, CNN, ST-CNN Aff,
# Proj, TPS) and the 60x60 cluttered MNIST (TC) results in its text (sec. 4.1: "an FCN gets 13.2%
# error, a CNN gets 3.5% error, while an ST-FCN gets 2.0% error and an ST-CNN gets 1.7% error")
PAPER = {
    "fcn": {"R": 2.1, "RTS": 5.2, "P": 3.1, "E": 3.2, "TC": 13.2},
    "st_fcn": {"R": 1.2, "RTS": 0.8, "P": 1.5, "E": 2.7, "TC": 2.0},
    "cnn": {"R": 1.2, "RTS": 0.8, "P": 1.5, "E": 1.4, "TC": 3.5},
    "stn": {"R": 0.7, "RTS": 0.5, "P": 0.8, "E": 1.2, "TC": 1.7},
    "stn_proj": {"R": 0.8, "RTS": 0.6, "P": 0.8, "E": 1.3},
    "stn_tps": {"R": 0.7, "RTS": 0.5, "P": 0.8, "E": 1.1},
}
PAPER["paper_cnn"], PAPER["paper_stn"], PAPER["paper_stn_tps"] = (
    PAPER["cnn"],
    PAPER["stn"],
    PAPER["stn_tps"],
)  # the same models, as the paper built them
# the best public re-implementation's STN (Esteves et al., Polar Transformer Networks, ICLR 2018,
# table 2; about 150k parameters), test error %
POLAR_TRANSFORMER_STN = {"R": 0.61, "RTS": 0.54}


@dataclass
class Run:
    folder: Path
    variant: str  # R, RTS, P, E, TC
    model: str  # the model= choice
    seed: int | None
    error: float  # test error %
    checkpoint: str
    config: DictConfig | None  # the run's resolved config (.hydra/config.yaml); None from a CSV
    recorded_schedule: str = ""  # its schedule line, when the run is read back from paper_runs.csv


RUNS_CSV = "paper_runs.csv"
RUNS_HEADER = ["variant", "model", "seed", "test_error_percent", "schedule"]


def runs_from_csv(path: Path) -> list[Run]:
    """The runs a `paper_runs.csv` recorded."""
    rows = read_csv(path)
    return [
        Run(path, row["variant"], row["model"], int(row["seed"]) if row["seed"] else None,
            float(row["test_error_percent"]), "", None, row["schedule"])
        for row in rows
    ]  # fmt: skip


def run_schedule(run: Run) -> str:
    """The schedule a run trained with, in a few words (from its config, or as recorded)."""
    cfg = run.config
    if cfg is None:
        return run.recorded_schedule
    images = cfg.data.get("train_subset") or 60_000 - cfg.data.val_size
    steps = math.ceil(images / cfg.data.batch_size)
    scheduler = cfg.model.get("scheduler")
    decay = scheduler._target_.rsplit(".", 1)[-1] if scheduler else "constant"
    return (
        f"{cfg.trainer.max_epochs} epochs x {steps} steps, batch {cfg.data.batch_size}, "
        f"{cfg.model.optimizer._target_.rsplit('.', 1)[-1]} peak lr {cfg.model.optimizer.lr} "
        f"(localization x{cfg.model.localization_lr_scale}), {decay}"
    )


def _moved_with_the_run(checkpoint: str, folder: Path) -> str:
    """metrics.json records an absolute path; a run folder copied or moved since (from a cluster,
    into a results folder) still has the file under its own checkpoints/."""
    if not checkpoint or Path(checkpoint).is_file():
        return checkpoint
    return str(folder / "checkpoints" / Path(checkpoint).name)


def find_runs(root: Path) -> list[Run]:
    """Every finished run below `root` trained on a distorted variant."""
    runs = []
    for run in run_folders(root):
        try:  # one broken run folder is skipped with a line; the others are tabulated
            metrics = run.metrics or {}
            if run.choices.get("data") not in PAPER_COLUMNS or "test/acc" not in metrics:
                continue
            config = run.config()
        except UserError as error:
            print(f"skipped {run.path}: {error}", file=sys.stderr)
            continue
        if not isinstance(metrics["test/acc"], (int, float)) or not math.isfinite(metrics["test/acc"]):
            print(f"skipped {run.path}: its test/acc is {metrics['test/acc']!r}", file=sys.stderr)
            continue
        runs.append(
            Run(
                folder=run.path,
                variant=PAPER_COLUMNS[run.choices["data"]],
                model=run.choices.get("model"),
                seed=config.get("seed"),
                error=100 * (1 - metrics["test/acc"]),
                checkpoint=_moved_with_the_run(metrics.get("best_model_path", ""), run.path),
                config=config,
            )
        )
    return runs


# Student's t, 97.5% quantile, by degrees of freedom (a 95% two-sided interval); 1.96 beyond 30
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip
# our mean is at or below the paper's error, and nothing else: an interval that reaches the paper's
# error would reward a wide spread over a narrow one with the same mean
MATCH = "✓"


def confidence_interval(errors: list[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95% confidence interval over seeds (t distribution with
    n - 1 degrees of freedom); half-width 0 for a single seed, where no interval exists."""
    mean = statistics.mean(errors)
    if len(errors) < 2:
        return mean, 0.0
    degrees = len(errors) - 1
    quantile = T_975[degrees - 1] if degrees <= len(T_975) else 1.96
    return mean, quantile * statistics.stdev(errors) / math.sqrt(len(errors))


def cell(errors: list[float], paper: float | None = None) -> str:
    """`mean ± CI half-width (n=seeds)`, marked where its mean is at or below the paper's error."""
    if not errors:
        return ""
    mean, half_width = confidence_interval(errors)
    text = f"{mean:.2f} ± {half_width:.2f} (n={len(errors)})" if len(errors) > 1 else f"{mean:.2f} (n=1)"
    matches = paper is not None and mean <= paper
    return f"{text} {MATCH}" if matches else text


def schedule(runs: list[Run]) -> list[str]:
    """One line per variant: the training schedules its runs used, and their seeds."""
    lines = []
    for variant in PAPER_COLUMNS.values():
        chosen = [r for r in runs if r.variant == variant]
        if not chosen:
            continue
        used = sorted({run_schedule(r) for r in chosen})
        seeds = sorted({r.seed for r in chosen if r.seed is not None})
        lines.append(f"- {variant}: {'; '.join(used)}; seeds {seeds}")
    return lines


def write_table(runs: list[Run], out: Path, command: str = "python -m stn.paper_table") -> str:
    columns = list(PAPER_COLUMNS.values())
    models = [m for m in MODELS if any(r.model == m for r in runs)]
    models += sorted({r.model for r in runs} - set(models))
    header = ["model"] + [f"{c} ours" for c in columns] + [f"{c} paper" for c in columns]
    rows = []
    for model in models:
        published = PAPER.get(model, {})
        ours = [
            cell([r.error for r in runs if r.model == model and r.variant == c], published.get(c))
            for c in columns
        ]
        paper = [str(published.get(c, "")) for c in columns]
        rows.append([MODELS.get(model, model), *ours, *paper])
    write_atomically(out / "paper_table.csv", csv_text([header, *rows]))
    records = [
        [r.variant, r.model, "" if r.seed is None else r.seed, f"{r.error:.4f}", run_schedule(r)]
        for r in runs
    ]
    write_atomically(out / RUNS_CSV, csv_text([RUNS_HEADER, *sorted(records, key=str)]))
    lines = [
        "| model | " + " | ".join(f"{c} (paper)" for c in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for row in rows:
        ours, paper = row[1 : 1 + len(columns)], row[1 + len(columns) :]
        cells = [f"{o or '—'} ({p or '—'})" for o, p in zip(ours, paper, strict=True)]
        lines.append(f"| {row[0]} | " + " | ".join(cells) + " |")
    markdown = (
        f"Written by `{command}`.\n\n"
        "Test error %, mean ± the half-width of its 95% confidence interval over seeds (t distribution), "
        f"the paper's error in brackets; {MATCH}: at or below the paper's error, or the interval reaches "
        "it and is narrower than the mean\n\n" + "\n".join(lines) + "\n"
    )
    markdown += "\nSchedule of the runs:\n\n" + "\n".join(schedule(runs)) + "\n"
    write_atomically(out / "paper_table.md", markdown)
    return markdown


def write_images(runs: list[Run], out: Path, count: int = 12) -> list[Path]:
    """Per variant: the first `count` fixed test digits, then each transformer model's output."""
    written = []
    for variant in PAPER_COLUMNS.values():
        chosen = {}
        for run in sorted(runs, key=lambda r: (r.seed is None, r.seed)):
            if run.variant == variant and run.model not in chosen and Path(run.checkpoint).is_file():
                chosen[run.model] = run
        networks = {m: checkpoint_model(Path(chosen[m].checkpoint)).network for m in MODELS if m in chosen}
        transformers = [m for m, network in networks.items() if network.transformer is not None]
        if not transformers:
            continue
        cfg = chosen[transformers[0]].config
        datamodule = build(cfg, "data", test_subset=count)
        datamodule.prepare_data()
        datamodule.setup("test")
        images, _ = datamodule.test_set.batch(slice(None))
        rows = [images]
        for model_name in transformers:
            with torch.no_grad():
                rows.append(at_input_size(networks[model_name].transform(images)[0], images))
        pixels = torch.cat(rows) * cfg.data.std + cfg.data.mean
        path = out / f"paper_{variant}.png"
        grid = make_grid(pixels.clamp(0, 1), nrow=count, padding=2, pad_value=1.0)
        save_image(labelled_rows(grid, ["input", *(MODELS[m] for m in transformers)]), path)
        (out / f"paper_{variant}.txt").write_text("rows: input, " + ", ".join(transformers) + "\n")
        written.append(path)
    return written
