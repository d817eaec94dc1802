"""Pictures of an Optuna sweep for its summary page: the timeline of its trials (one bar a trial,
start to end, pruned ones marked) with the time its slots stood idle while trials remained, and,
where the study is stored, Optuna's optimisation history, every trial's validation curve (pruned
ones dimmed) and the parameters' importances.

The timeline reads the sweep folder's `trials.csv` (written by the sweeper as trials end); the rest
open the study named in `study.yaml` (its storage and name).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from stn.errors import UserError, first_line
from stn.runs.reading import plain_yaml
from stn.utils.files import read_csv

TRIALS_FILE = "trials.csv"
STUDY_FILE = "study.yaml"
COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:grey"}


@dataclass(frozen=True)
class TrialSpan:
    trial: int
    job: str
    state: str
    start: datetime
    end: datetime | None


def trial_spans(sweep_dir: Path) -> list[TrialSpan]:
    """The sweep's trials with their start and end, from its trials.csv ([] without one)."""
    path = sweep_dir / TRIALS_FILE
    if not path.is_file():
        return []
    spans = []
    for row in read_csv(path):
        if not row.get("start"):
            continue
        end = datetime.fromisoformat(row["end"]) if row.get("end") else None
        spans.append(TrialSpan(int(row["trial"]), row.get("job", ""), row["state"],
                               datetime.fromisoformat(row["start"]), end))  # fmt: skip
    return sorted(spans, key=lambda s: s.start)


def idle_slot_seconds(spans: list[tuple[float, float]], slots: int) -> float:
    """Slot-seconds with no trial in them between the first start and the last start: the time a
    sweep of `slots` trials at once left a slot empty while trials remained to be launched."""
    if not spans:
        return 0.0
    starts = sorted(start for start, _ in spans)
    first, last = starts[0], starts[-1]
    events = sorted({first, last, *(t for s in spans for t in s if first <= t <= last)})
    idle = 0.0
    for left, right in zip(events, events[1:], strict=False):
        middle = (left + right) / 2
        busy = sum(start <= middle < end for start, end in spans)
        idle += max(slots - busy, 0) * (right - left)
    return idle


def write_timeline(sweep_dir: Path, out: Path, slots: int | None = None) -> tuple[Path, float] | None:
    """timeline.png (one bar a trial, time since the sweep began) and the idle slot-seconds, or
    None for a sweep without trials.csv."""
    spans = [s for s in trial_spans(sweep_dir) if s.end is not None]
    if not spans:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origin = min(s.start for s in spans)
    seconds = [((s.start - origin).total_seconds(), (s.end - origin).total_seconds()) for s in spans]
    slots = slots or _most_at_once(seconds)
    idle = idle_slot_seconds(seconds, slots)
    figure, axis = plt.subplots(figsize=(8, 0.6 + 0.3 * len(spans)))
    for row, (span, (start, end)) in enumerate(zip(spans, seconds, strict=True)):
        axis.barh(row, end - start, left=start, color=COLOURS.get(span.state, "tab:grey"),
                  hatch="//" if span.state == "PRUNED" else None, edgecolor="white")  # fmt: skip
    axis.set_yticks(range(len(spans)), [f"trial {s.trial} (job {s.job})" for s in spans], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("seconds since the sweep's first trial began")
    title = f"{len(spans)} trials, {slots} at a time; idle slot time while trials remained: {idle:.0f} s"
    axis.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    states = sorted({s.state for s in spans})
    axis.legend(handles=[Patch(color=COLOURS.get(s, "tab:grey"), label=s.lower()) for s in states],
                fontsize=8, loc="best")  # fmt: skip
    axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    path = out / "timeline.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path, idle


def _most_at_once(seconds: list[tuple[float, float]]) -> int:
    return max(sum(s <= start < e for s, e in seconds) for start, _ in seconds)


def load_study(sweep_dir: Path) -> Any | None:
    """The sweep's stored study (study.yaml names its storage and name), or None."""
    path = sweep_dir / STUDY_FILE
    if not path.is_file():
        return None
    import optuna

    from stn.sweeps.storage import open_storage

    record = plain_yaml(path)
    try:
        storage = open_storage(str(record["storage"]))
        return optuna.load_study(study_name=str(record["study_name"]), storage=storage)
    except Exception as error:
        raise UserError(f"the study in {path} cannot be opened ({first_line(error)[:200]})") from None


def write_study_plots(study: Any, out: Path, metric: str) -> list[Path]:
    """history.png, curves.png and importances.png (where the study has what each needs)."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    written = []
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if finished:
            axis = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=metric)
            written.append(_save(axis.figure, out / "history.png", plt))
        if len({tuple(sorted(t.params.items())) for t in finished}) >= 2:
            try:
                axis = optuna.visualization.matplotlib.plot_param_importances(study, target_name=metric)
                written.append(_save(axis.figure, out / "importances.png", plt))
            except (RuntimeError, ValueError):  # too few distinct points for the evaluator
                pass
    curves = [t for t in trials if t.intermediate_values]
    if curves:
        figure, axis = plt.subplots(figsize=(7, 4))
        for trial in curves:
            steps = sorted(trial.intermediate_values)
            pruned = trial.state == TrialState.PRUNED
            axis.plot(steps, [trial.intermediate_values[s] for s in steps], marker="o", markersize=3,
                      alpha=0.3 if pruned else 0.9, linestyle="--" if pruned else "-",
                      label=f"trial {trial.number}" + (" (pruned)" if pruned else ""))  # fmt: skip
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title("every trial's validation curve (pruned: dimmed, dashed)", fontsize=9)
        axis.grid(alpha=0.3)
        if len(curves) <= 12:
            axis.legend(fontsize=7)
        figure.tight_layout()
        written.append(_save(figure, out / "curves.png", plt))
    return written


def _save(figure: Any, path: Path, plt: Any) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
