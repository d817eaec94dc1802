"""summary.html: one static page for a sweep (no server; images inside it) with the table, the
plot, for an Optuna sweep its timeline, history, curves and importances, and each job's final
transformed digits and transform telemetry, so a sweep is read in one place."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from stn.errors import ConfigError
from stn.sweeps.summary import MAX_PICTURE_BYTES, Job, _fmt, table_rows
from stn.utils.files import read_bytes, write_atomically

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
tr.failed td, tr.diverged td { color: #a00; }
tr.pruned td { color: #888; }
td { overflow-wrap: anywhere; }
.wide { max-width: 100%; overflow-x: auto; }
.jobs { display: flex; flex-wrap: wrap; gap: 16px; }
.job { border: 1px solid #ccc; border-radius: 6px; padding: 10px; max-width: 360px; }
.job h3 { margin: 0 0 6px 0; font-size: 15px; overflow-wrap: anywhere; }
.job img { max-width: 340px; image-rendering: pixelated; }
.note { color: #666; font-size: 13px; }
"""
TELEMETRY = ("scale", "rotation", "shear", "translation", "outside_fraction", "background_fraction")


def _image_tag(path: Path, alt: str) -> str:
    """An <img> holding the PNG itself (base64), so the page is one file that opens anywhere; a
    picture that is not a bounded regular file is left out."""
    try:
        encoded = base64.b64encode(read_bytes(path, MAX_PICTURE_BYTES)).decode("ascii")
    except ConfigError:
        return f"<p class='note'>{html.escape(alt)}: not a readable picture</p>"
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def write_html(
    jobs: list[Job],
    keys: list[str],
    metrics: list[str],
    metric: str,
    out: Path,
    title: str,
    fixed: dict[str, str] | None = None,
    command: str | None = None,
    study_pictures: list[tuple[str, Path]] | None = None,
) -> Path:
    """One static page for the sweep: the table, the metric-vs-parameter plot, and per job its
    final transformed digits (the run's transform_history.png) and its transform telemetry."""
    header = ["job", "status", *keys, *metrics, "error"]
    rows = []
    for job, cells in zip(jobs, table_rows(jobs, keys, metrics), strict=True):
        rows.append(
            f'<tr class="{job.status}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{PAGE_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>{len(jobs)} jobs, ranked by {html.escape(metric)}; "
        f"{sum(j.status == 'pruned' for j in jobs)} pruned, "
        f"{sum(j.status not in ('ok', 'pruned') for j in jobs)} failed.</p>",
        *([f"<p>Command: <code>{html.escape(command)}</code></p>"] if command else []),
        "<p>Fixed for every job: "
        + (
            ", ".join(
                f"<code>{html.escape(k)}={html.escape(str(v))}</code>" for k, v in (fixed or {}).items()
            )
            or "nothing beyond the defaults"
        )
        + "</p>",
        "<h2>Jobs</h2><div class='wide'><table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr>",
        *rows,
        "</table></div>",
    ]
    for heading, picture in study_pictures or []:
        parts += [f"<h2>{html.escape(heading)}</h2>", _image_tag(picture, heading)]
    plot = out / "summary.png"
    if plot.is_file():
        parts += [f"<h2>{html.escape(metric)} against each swept parameter</h2>", _image_tag(plot, "plot")]
    parts.append("<h2>What each job's transformer does</h2><div class='jobs'>")
    parts += [_job_card(job, keys, metric) for job in jobs]
    parts.append("</div></body></html>")
    path = out / "summary.html"
    write_atomically(path, "\n".join(parts) + "\n")
    return path


def _job_card(job: Job, keys: list[str], metric: str) -> str:
    """One job's card: its status, swept values, metric or error, telemetry and transform history."""
    overrides = ", ".join(f"{k}={job.overrides[k]}" for k in keys if k in job.overrides)
    card = [f"<div class='job'><h3>job {html.escape(job.name)}: {html.escape(job.status)}</h3>"]
    card.append(f"<p class='note'>{html.escape(overrides)}</p>")
    if job.status == "pruned":
        stopped = f"{html.escape(metric)} = {_fmt(job.metrics.get(metric))}"
        card.append(f"<p class='note'>pruned after epoch {job.pruned_after}: {stopped}</p>")
    elif job.finished:
        card.append(f"<p>{html.escape(metric)} = {_fmt(job.metrics.get(metric))}</p>")
        figures = [(name, job.metrics.get(f"transform/{name}")) for name in TELEMETRY]
        figures = [(name, value) for name, value in figures if value is not None]
        if figures:
            card.append("<table>" + "".join(f"<tr><td>{n}</td><td>{_fmt(v)}</td></tr>" for n, v in figures))
            card.append("</table>")
    else:
        card.append(f"<p class='note'>{html.escape(job.error or '')}</p>")
    history = job.folder / "transform_history.png"
    if history.is_file():
        card.append("<p class='note'>the same digits at every epoch (last row: the final model)</p>")
        card.append(_image_tag(history, f"job {job.name} transform history"))
    return "".join(card) + "</div>"
