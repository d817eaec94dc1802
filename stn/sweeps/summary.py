"""A finished sweep read back for its summary (stn.summarize): every job folder of the sweep
(Hydra's `.hydra/overrides.yaml`, and `metrics.json` once the job finished) as a `Job`, ranked:
finished jobs best first, then the pruned ones (ranked by the value they were stopped at), then the
failed ones with their error (from the job's log); the tables (`summary.md`, `summary.csv`) and
`summary.png` (the metric against each swept parameter). The page is stn/sweeps/summary_page.py.
"""

from __future__ import annotations

import html
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stn.errors import ConfigError, UserError
from stn.runs.reading import plain_yaml, run_folders, saved_config, split_override
from stn.utils.files import csv_text, read_bytes, write_atomically

MAX_LOG_BYTES = 64 << 20  # a job's log that stn.summarize reads for its error
MAX_PICTURE_BYTES = 32 << 20  # a job's transform history, put inside summary.html
METRICS = ("val/acc_best", "val/loss", "test/acc", "test/loss", "time/fit_seconds")


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    pruned_after: int | None = None  # the epoch after which its study's pruner stopped it

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def finished(self) -> bool:
        """It wrote its metrics, and every one of them is a number (a NaN or inf metric is a run
        that went wrong, never one to rank)."""
        return bool(self.metrics) and all(math.isfinite(value) for value in self.metrics.values())

    @property
    def status(self) -> str:
        """ok, pruned (stopped early by its study's pruner), diverged (the loss stopped being
        finite) or failed."""
        if self.pruned_after is not None and not self.error:
            return "pruned"
        if self.finished:
            return "ok"
        if self.metrics:  # finished, but with a metric that is not a number
            return "diverged"
        return "diverged" if (self.error or "").startswith("training diverged") else "failed"


def job_error(folder: Path) -> str:
    """The first line of the last error a job logged (its `<task>.log`), or what it lacks."""
    messages = []
    for log_file in sorted(folder.glob("*.log")):
        try:  # a bounded regular file: a FIFO or a link to /dev/zero named *.log is skipped
            text = read_bytes(log_file, MAX_LOG_BYTES).decode("utf-8", errors="replace")
        except ConfigError:
            continue
        for line in text.splitlines():
            match = re.match(r"\[[^\]]*\]\[[^\]]*\]\[ERROR\] - (.*)", line)
            if match:
                messages.append(match.group(1))
    return messages[-1] if messages else "no metrics.json and no error in its log (killed, or still running)"


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder of the sweep; one whose record cannot be read (a broken overrides.yaml or
    metrics.json) is a failed job with that sentence as its error, and the others still count."""
    jobs = []
    for run in run_folders(sweep_dir):
        try:
            overrides = dict(split_override(override) for override in run.overrides)
        except UserError as error:
            jobs.append(Job(run.path, {}, error=str(error)))
            continue
        try:
            run_metrics = run.metrics
        except UserError as error:
            jobs.append(Job(run.path, overrides, error=str(error)))
            continue
        if run_metrics is not None:
            pruned = run_metrics.get("pruned") if isinstance(run_metrics.get("pruned"), dict) else None
            run_metrics = {k: v for k, v in run_metrics.items() if k != "pruned"}
            metrics = {
                k: float(v)
                for k, v in run_metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            job = Job(run.path, overrides, metrics)
            if pruned is not None and isinstance(pruned.get("epoch"), int):
                job.pruned_after = pruned["epoch"]
            if not job.finished:
                # what the project writes besides numbers: the best checkpoint's path
                words = {k: v for k, v in run_metrics.items() if k not in metrics and k != "best_model_path"}
                bad = [f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v)]
                bad += [f"{k}={str(v)[:40]!r}" for k, v in words.items()]
                job.error = f"metrics that are not numbers: {', '.join(bad) or 'none of them is a number'}"
            jobs.append(job)
        else:
            jobs.append(Job(run.path, overrides, error=job_error(run.path)))
    return sorted(jobs, key=lambda j: (len(j.name), j.name))


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose value differs between jobs (the sweep's parameters)."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    # optuna_trial: the trial number the sweeper gives each job, not a parameter
    return [k for k in keys if k != "optuna_trial" and len({job.overrides.get(k) for job in jobs}) > 1]


def ranked(jobs: list[Job], metric: str, mode: str) -> list[Job]:
    """Finished jobs best first, then pruned ones (by the value they were stopped at), then the rest."""
    worst = -math.inf if mode == "max" else math.inf
    groups = [[j for j in jobs if j.status == status] for status in ("ok", "pruned")]
    for group in groups:
        group.sort(key=lambda j: j.metrics.get(metric, worst), reverse=mode == "max")
    return groups[0] + groups[1] + [j for j in jobs if j.status not in ("ok", "pruned")]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def table_rows(jobs: list[Job], keys: list[str], metrics: list[str]) -> list[list[str]]:
    rows = []
    for job in jobs:
        cells = [job.name, job.status]
        cells += [job.overrides.get(k, "") for k in keys]
        cells += [_fmt(job.metrics.get(m)) for m in metrics]
        pruned = f"pruned after epoch {job.pruned_after}" if job.status == "pruned" else ""
        cells.append(job.error or pruned)
        rows.append(cells)
    return rows


def one_line(cell: str) -> str:
    """A value as one line: a newline in an override or an error would split its table row."""
    return " ".join(str(cell).splitlines())


def spreadsheet_safe(cell: str) -> str:
    """A CSV cell a spreadsheet shows as written: one that starts with =, +, -, @ (or a tab or
    carriage return) and is not a number would be evaluated as a formula, so it gets a leading
    apostrophe, as OWASP's CSV-injection advice and the spreadsheets themselves do."""
    cell = one_line(cell)
    if cell and cell[0] in "=+-@\t\r" and _number(cell) is None:
        return "'" + cell
    return cell


def markdown_cell(cell: str) -> str:
    """A cell of summary.md: one line, its HTML shown as text, its | not a column break."""
    return html.escape(one_line(cell), quote=False).replace("|", "\\|")


def code_span(text: str) -> str:
    """`text` as a Markdown code span (shown as written, HTML included), on one line; a backtick in
    it would end the span, so it is shown as an apostrophe."""
    return "`" + one_line(text).replace("`", "'") + "`"


def write_tables(
    jobs: list[Job], keys: list[str], metrics: list[str], out: Path, preamble: str = ""
) -> tuple[Path, Path]:
    header = ["job", "status", *keys, *metrics, "error"]
    rows = table_rows(jobs, keys, metrics)
    csv_path = out / "summary.csv"
    write_atomically(csv_path, csv_text([[spreadsheet_safe(c) for c in row] for row in [header, *rows]]))
    md_path = out / "summary.md"
    escape = [[markdown_cell(cell) for cell in row] for row in [header, *rows]]
    header, escape = escape[0], escape[1:]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in escape]
    write_atomically(md_path, preamble + "\n".join(lines) + "\n")
    return md_path, csv_path


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def draw_against(axis: Any, key: str, values: list[str], scores: list[float]) -> None:
    """Scores against one swept key's values on a matplotlib axis: numbers on a log axis for a step
    size or a span over 10x, on integer ticks for integers (a depth, a batch size), else categories."""
    from matplotlib.ticker import MaxNLocator

    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        axis.scatter(numbers, scores)
        positive = [n for n in numbers if n > 0]
        step_size = "lr" in key.rsplit(".", 1)[-1]
        if len(positive) == len(numbers) and (step_size or max(positive) / min(positive) > 10):
            axis.set_xscale("log")
        elif all(float(n).is_integer() for n in numbers):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        categories = sorted(set(values))
        axis.scatter([categories.index(v) for v in values], scores)
        axis.set_xticks(range(len(categories)), categories, rotation=30)
    axis.set_xlabel(key)
    axis.grid(alpha=0.3)


def write_plot(jobs: list[Job], keys: list[str], metric: str, out: Path) -> Path | None:
    """The metric against each swept parameter: numbers on a (log, when they span > 10x) axis,
    anything else as categories; pruned trials are not in it (their metric is an early one)."""
    finished = [j for j in jobs if j.status == "ok" and metric in j.metrics]
    if not finished or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        draw_against(
            axis, key, [j.overrides.get(key, "") for j in finished], [j.metrics[metric] for j in finished]
        )
        axis.set_ylabel(metric)
    figure.tight_layout()
    path = out / "summary.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def fixed_overrides(jobs: list[Job], keys: list[str]) -> dict[str, str]:
    """The overrides every job shares (the sweep's fixed settings: `trainer.max_epochs=2`, a subset)."""
    shared = [k for job in jobs for k in job.overrides if k not in keys and k]
    return {
        k: jobs[0].overrides[k]
        for k in dict.fromkeys(shared)
        if all(j.overrides.get(k) == jobs[0].overrides.get(k) for j in jobs)
    }


def sweep_command(sweep_dir: Path) -> str | None:
    """The command that made the sweep, from Hydra's record of it (`<sweep>/multirun.yaml`)."""
    record = sweep_dir / "multirun.yaml"
    if not record.is_file():
        return None
    try:
        task = plain_yaml(record)["hydra"]["overrides"]["task"]
        return "python -m stn.train --multirun " + " ".join(str(override) for override in task)
    except (UserError, KeyError, TypeError):
        return None


def sweep_metric(jobs: list[Job]) -> str:
    """The metric the sweep optimised (`optimized_metric` in the jobs' config)."""
    for job in jobs:
        if (job.folder / ".hydra" / "config.yaml").is_file():
            try:
                return str(saved_config(job.folder).get("optimized_metric", METRICS[0]))
            except UserError as error:
                print(f"skipped {job.folder}'s config: {error}", file=sys.stderr)
    return METRICS[0]
