"""`python -m stn.summarize`: a sweep's table, best first, with its failed jobs; the paper table's
interval arithmetic."""

from __future__ import annotations

import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stn.summarize import main as summarize
from stn.sweeps.paper_table import MATCH, T_975, cell, confidence_interval

from .conftest import (
    ROOT,
    TINY,
    multirun,
)


@pytest.mark.slow
def test_summary_ranks_jobs_and_lists_the_failed_one(tmp_path: Path, mnist_dir: Path):
    sweep = tmp_path / "sweep"
    # depth 9 does not fit a 28x28 input: that job fails
    process, _ = multirun(
        *TINY, "model.localization.depth=1,2,9", sweep=sweep, data_dir=mnist_dir, check=False
    )
    assert process.returncode != 0  # the sweep reports its failed job
    assert summarize([str(sweep)]) == 0
    text = (sweep / "summary.md").read_text()
    assert (
        text.startswith("Command: `python -m stn.train --multirun ")
        and "model.localization.depth=1,2,9" in text
    )
    lines = text[text.index("| job") :].splitlines()  # after the command and the fixed overrides
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:4] == ["job", "status", "model.localization.depth", "val/acc_best"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [row[1] for row in rows] == ["ok", "ok", "failed"]
    scores = [float(row[3]) for row in rows[:2]]
    assert scores == sorted(scores, reverse=True)  # best first
    assert rows[2][2] == "9" and "model.localization.depth=9 is out of range" in rows[2][-1]
    assert (sweep / "summary.csv").read_text().count("\n") == 4
    assert (sweep / "summary.png").stat().st_size > 0
    check_the_html_page(sweep / "summary.html", tmp_path / "screenshot.png")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows, self.images, self.cards = 0, [], 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.rows += tag == "tr" and attributes.get("class") in ("ok", "failed", "diverged")
        self.cards += tag == "div" and attributes.get("class") == "job"
        if tag == "img":
            self.images.append(attributes["src"])


def check_the_html_page(page: Path, screenshot: Path) -> None:
    """The sweep's page: a row and a card per job, its pictures inside it; rendered by a real
    headless browser where one is installed (Debian's chromium)."""
    text = page.read_text()
    parsed = _Page()
    parsed.feed(text)
    assert parsed.rows == 3 and parsed.cards == 3
    assert len(parsed.images) == 3 and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert "outside_fraction" in text and "model.localization.depth=9 is out of range" in text
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={screenshot}",
         "--window-size=1200,1600", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # a rendered page, not a blank one


def test_summary_of_a_folder_without_runs_is_one_sentence(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as stop:
        summarize([str(tmp_path)])
    assert str(stop.value) == f"error: no runs under {tmp_path}: no job folder with .hydra/overrides.yaml"


def test_the_paper_table_cell_is_a_t_interval_marked_against_the_paper():
    mean, half_width = confidence_interval([1.0, 2.0, 3.0])  # sd 1, n 3, t(0.975, 2 df) = 4.303
    assert mean == 2.0 and half_width == pytest.approx(4.303 / math.sqrt(3))
    assert confidence_interval([0.8]) == (0.8, 0.0)
    assert cell([1.0, 1.2, 1.1], paper=0.7) == "1.10 ± 0.25 (n=3)"  # 0.85..1.35: above the paper
    assert cell([1.0, 1.2, 1.1], paper=0.9) == "1.10 ± 0.25 (n=3)"  # reaches 0.9, but its mean is above
    assert cell([0.9, 0.8, 0.7], paper=0.8) == f"0.80 ± 0.25 (n=3) {MATCH}"  # at the paper's
    assert cell([0.5], paper=0.7) == f"0.50 (n=1) {MATCH}"  # below it
    assert cell([0.1, 5.0], paper=1.0) == "2.55 ± 31.13 (n=2)"
    assert cell([0.5]) == "0.50 (n=1)" and cell([]) == ""


def test_the_t_quantiles_are_students():
    stats = pytest.importorskip("scipy.stats")
    for degrees, quantile in enumerate(T_975, start=1):
        assert quantile == pytest.approx(stats.t.ppf(0.975, degrees), abs=6e-4)


def test_the_paper_table_is_written_again_from_its_runs_csv(tmp_path: Path):
    from stn.sweeps.paper_table import RUNS_CSV, runs_from_csv, write_table

    recorded = ROOT / "docs" / "paper" / RUNS_CSV
    first = write_table(runs_from_csv(recorded), tmp_path, command="x")
    (tmp_path / "again").mkdir()
    again = write_table(runs_from_csv(tmp_path / RUNS_CSV), tmp_path / "again", command="x")
    assert first == again  # the CSV it writes holds everything the table needs
    assert "| CNN | 7.46 (n=1) (1.2) | 17.22 ± 4.08 (n=3) (0.8) |" in first
    assert (ROOT / "docs" / "paper" / "paper_table.md").read_text().split("\n", 2)[2] == first.split("\n", 2)[
        2
    ]


def test_a_swept_integer_is_drawn_on_integer_ticks_and_a_step_on_a_log_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stn.sweeps.summary import draw_against

    figure, (depth, lr, optimizer) = plt.subplots(1, 3)
    draw_against(depth, "model.localization.depth", ["1", "2", "3"], [0.9, 0.95, 0.93])
    draw_against(lr, "model.optimizer.lr", ["0.001", "0.003"], [0.9, 0.95])
    draw_against(optimizer, "model/optimizer", ["sgd", "adam"], [0.9, 0.95])
    figure.canvas.draw()
    ticks = [tick for tick in depth.get_xticks() if depth.get_xlim()[0] <= tick <= depth.get_xlim()[1]]
    assert ticks and all(float(tick).is_integer() for tick in ticks)  # no 1.2, 1.4, ...
    assert lr.get_xscale() == "log" and depth.get_xscale() == "linear"
    assert [label.get_text() for label in optimizer.get_xticklabels()] == ["adam", "sgd"]
    plt.close(figure)
