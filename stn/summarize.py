"""One table and one page for a finished sweep:

    python -m stn.summarize outputs/train/multiruns/<date>_<time> [--out DIR] [--metric M] [--mode max]

Writes `summary.md` and `summary.csv` (one row per job with its overrides and final metrics: best
first, then pruned trials, then failed jobs with their error), `summary.png` (the metric against
each swept parameter) and `summary.html` (stn/sweeps/summary_page.py); for an Optuna sweep also
`timeline.png` and, where its study is stored, `history.png`, `curves.png` and `importances.png`
(stn/sweeps/study_plots.py). The reading and the tables are stn/sweeps/summary.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stn.errors import UserError
from stn.sweeps.summary import (
    METRICS,
    code_span,
    fixed_overrides,
    load_jobs,
    ranked,
    sweep_command,
    sweep_metric,
    swept_keys,
    write_plot,
    write_tables,
)
from stn.sweeps.summary_page import write_html


def study_pictures(sweep_dir: Path, out: Path, metric: str) -> list[tuple[str, Path]]:
    """An Optuna sweep's timeline and, where its study is stored, Optuna's pictures of it (a study
    that cannot be opened is named on stderr; the rest of the summary is still written)."""
    from stn.sweeps.study_plots import load_study, write_study_plots, write_timeline

    pictures = []
    timeline = write_timeline(sweep_dir, out)
    if timeline is not None:
        pictures.append(("Timeline: one bar a trial (pruned: hatched)", timeline[0]))
    try:
        study = load_study(sweep_dir)
    except UserError as error:
        print(f"skipped the study's pictures: {error}", file=sys.stderr)
        return pictures
    if study is not None:
        titles = {"history": "Optimisation history", "curves": "Every trial's validation curve",
                  "importances": "Parameter importances"}  # fmt: skip
        pictures += [(titles[path.stem], path) for path in write_study_plots(study, out, metric)]
    return pictures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="outputs/train/multiruns/<date>_<time>")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep folder)")
    parser.add_argument("--metric", default=None, help="rank by this metric (default: optimized_metric)")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    args = parser.parse_args(argv)

    jobs = load_jobs(args.sweep_dir) if args.sweep_dir.is_dir() else []
    if not jobs:
        sys.exit(f"error: no runs under {args.sweep_dir}: no job folder with .hydra/overrides.yaml")
    metric = args.metric or sweep_metric(jobs)
    readable = [job for job in jobs if job.overrides] or jobs  # a job whose record broke has none
    keys = swept_keys(readable)
    metrics = [metric, *(m for m in METRICS if m != metric)]
    jobs = ranked(jobs, metric, args.mode)
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    fixed, command = fixed_overrides(readable, keys), sweep_command(args.sweep_dir)
    preamble = (f"Command: {code_span(command)}\n\n" if command else "") + (
        "Fixed for every job: "
        + (", ".join(code_span(f"{k}={v}") for k, v in fixed.items()) or "nothing beyond the defaults")
        + "\n\n"
    )
    written = [*write_tables(jobs, keys, metrics, out, preamble), write_plot(jobs, keys, metric, out)]
    pictures = study_pictures(args.sweep_dir, out, metric)
    written += [path for _, path in pictures]
    title = f"Sweep {args.sweep_dir}"
    written.append(
        write_html(
            jobs, keys, metrics, metric, out, title, fixed=fixed, command=command, study_pictures=pictures
        )
    )
    failed = sum(j.status not in ("ok", "pruned") for j in jobs)
    pruned = sum(j.status == "pruned" for j in jobs)
    print((out / "summary.md").read_text())
    print(
        f"{len(jobs)} jobs ({pruned} pruned, {failed} failed), ranked by {metric} ({args.mode}); wrote",
        end=" ",
    )
    print(", ".join(str(p) for p in written if p is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
