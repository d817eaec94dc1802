"""The STN paper's results table from finished runs:

    python -m stn.paper_table outputs/train/multiruns/<date>_<time> [--out DIR] [--no-images]
    python -m stn.paper_table docs/paper/paper_runs.csv --out docs/paper   # again, from the runs' CSV

What it reads and writes: stn/sweeps/paper_table.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "root",
        type=Path,
        help="a folder of finished runs (searched recursively), or the paper_runs.csv they wrote",
    )
    parser.add_argument("--out", type=Path, help="where to write the table and images (default: root)")
    parser.add_argument("--no-images", action="store_true")
    args = parser.parse_args()
    from stn.sweeps.paper_table import (
        RUNS_CSV,
        find_runs,
        runs_from_csv,
        write_images,
        write_table,
    )  # torch: now

    from_csv = args.root.is_file() and args.root.suffix == ".csv"
    if not (args.root.is_dir() or from_csv):
        raise SystemExit(f"error: {args.root} is not a folder of runs nor a {RUNS_CSV}")
    runs = runs_from_csv(args.root) if from_csv else find_runs(args.root)
    if not runs:
        raise SystemExit(f"error: no finished run on a distorted variant (data=mnist_*) in {args.root}")
    out = args.out or (args.root.parent if from_csv else args.root)
    out.mkdir(parents=True, exist_ok=True)
    print(write_table(runs, out, "python -m stn.paper_table " + " ".join(sys.argv[1:])))
    if not args.no_images and not from_csv:
        for path in write_images(runs, out):
            print(f"wrote {path}")
    print(f"wrote {out / 'paper_table.md'} and {out / 'paper_table.csv'} ({len(runs)} runs)")


if __name__ == "__main__":
    main()
